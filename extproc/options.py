"""One settings mechanism for every command: a frozen dataclass whose fields are the options.

Each field declared with :func:`opt` carries its default, its help text, its metavar, its checks and
(derived from its name) its flag and its environment variable; a nested dataclass declared with
:func:`group` is a group of options, with or without a flag prefix. From that one declaration come the
argparse flags, the ``--help`` lines (real metavars, defaults and environment names), the docs table,
and the parsing and checking of a value from whichever source it came. Four hand-written option systems
drifted apart before this (defaults written twice, help without defaults, a flag that reached
nothing); a command that declares its options here cannot have an undocumented or unreachable one,
and tests/unit/test_command_options.py walks the fields to prove each reaches what it configures.

Precedence, lowest first: the field's default < ``<PREFIX><NAME>`` in the environment < the flag.
The router's own settings (``extproc.config``) add a YAML file between default and environment and
use the same fields, flags and table.

This module sits below ``extproc.config`` and knows nothing of any command.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "BUDGET_ROUTER_"
# A check on a parsed value: a predicate and what it says when the value fails it ("must be > 0").
Check = tuple[Callable[[Any], bool], str]
T = TypeVar("T")
_NONE_WORDS = ("none", "off")


class ConfigError(ValueError):
    """Settings that cannot be used; each line of ``errors`` names its option."""

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def opt(
    default: Any,
    doc: str,
    metavar: str | None = None,
    *,
    parse: Callable[[str], Any] | None = None,
    check: Check | None = None,
    choices: Iterable[str] | None = None,
    aliases: tuple[str, ...] = (),
    shown: str | None = None,
    env: bool = True,
    repeat: bool = False,
    const: Any = None,
    example: Any = None,
) -> Any:
    """An option field.

    ``parse`` turns the text of a flag or an environment variable into the value (the type hint does
    when it is a plain bool, int, float, str, Path, list or tuple, optional or not; ``none``/``off``
    mean None for an optional one). ``check`` and ``choices`` apply to every value given. ``aliases``
    are extra flag spellings; ``shown`` is how ``--help`` writes a default that is computed (a path
    under ``$HOME``); ``env=False`` for an option no environment should set; ``repeat`` collects a
    repeated flag into a tuple; ``const`` is the value of the bare flag when its value is optional.
    ``example`` is a non-default value the settings test sets when the type alone cannot make one.
    """
    metadata = {
        "doc": doc, "metavar": metavar, "parse": parse, "check": check, "aliases": aliases, "shown": shown,
        "env": env, "repeat": repeat, "const": const, "example": example,
        "choices": tuple(choices) if choices is not None else None,
    }  # fmt: skip
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default.copy(), metadata=metadata)
    return field(default=default, metadata=metadata)


def group(cls: type, prefix: str = "", title: str | None = None) -> Any:
    """A nested dataclass of options; ``prefix`` goes before its flags and environment names
    (``prefix="routing"``: ``--routing-b-short``, ``..._ROUTING_B_SHORT``)."""
    return field(default_factory=cls, metadata={"group": True, "prefix": prefix, "title": title})


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: how a command's option takes its default
    from the object it configures (one source)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


# -- checks ----------------------------------------------------------------------------------------
def at_least(lo: float) -> Check:
    return (lambda v: v is None or v >= lo, f"must be >= {lo:g}")


def above(lo: float) -> Check:
    return (lambda v: v is None or v > lo, f"must be > {lo:g}")


def within(lo: float, hi: float) -> Check:
    return (lambda v: v is None or lo <= v <= hi, f"must be within [{lo:g}, {hi:g}]")


def port_number() -> Check:
    return (lambda v: 0 <= v <= 65535, "must be a port in 0..65535 (0 = any free one)")


# -- parsing ---------------------------------------------------------------------------------------
def _optional_of(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _is_none_word(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (a flag's or variable's text, or a YAML value) as type ``tp``; a ConfigError naming
    ``where`` when it cannot be one."""
    inner = _optional_of(tp)
    if inner is not None:
        if _is_none_word(value):
            return None
        return coerce(inner, value, where)
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in {"1", "true", "yes", "on"}:
                return True
            if s in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if tp is str:
            if isinstance(value, list | dict):
                raise TypeError(value)
            return str(value)
        if tp is Path:
            if not isinstance(value, str | Path) or not str(value):
                raise TypeError(value)
            return Path(value)
        if origin in (list, tuple):
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise TypeError(value)
            element = typing.get_args(tp)[0] if typing.get_args(tp) else str
            parsed = [coerce(element, v, where) for v in items]
            return parsed if origin is list else tuple(parsed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r} as {getattr(tp, '__name__', tp)}") from exc
    return value


# -- introspection ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One option as the mechanism sees it: where it sits in the settings and how it is spelled."""

    path: tuple[str, ...]  # field names from the root settings class
    field: dataclasses.Field[Any]
    tp: Any  # the resolved type hint
    flag: str
    env: str | None
    group: str | None  # the --help section

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def dest(self) -> str:
        return "opt__" + "__".join(self.path)

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def is_switch(self) -> bool:
        return bool in (self.tp, _optional_of(self.tp))

    @property
    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        assert self.field.default_factory is not dataclasses.MISSING, f"{self.name} has no default"
        return self.field.default_factory()

    @property
    def shown(self) -> str:
        """The default as ``--help`` and the docs write it."""
        if self.meta.get("shown") is not None:
            return str(self.meta["shown"])
        value = self.default
        if value is None:
            return "none"
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value) or "(empty)"
        return str(value) if value != "" else "(empty)"

    @property
    def metavar(self) -> str:
        """How a value looks: declared, the choices, or from the name's unit suffix and the type."""
        if self.meta.get("metavar"):
            return str(self.meta["metavar"])
        if self.meta.get("choices"):
            return "{" + ",".join(self.meta["choices"]) + "}"
        name, tp = self.path[-1], _optional_of(self.tp) or self.tp
        if name.endswith("_s"):
            return "SECONDS"
        if name.endswith("_ms"):
            return "MS"
        if name.endswith("_bytes"):
            return "BYTES"
        if name.endswith("port"):
            return "PORT"
        if tp is int:
            return "N"
        if tp is float:
            return "X"
        if tp is Path:
            return "PATH"
        if tp is str:
            return "TEXT"
        return "A,B,..."  # a list: comma-separated

    def help(self) -> str:
        env = f"; env: {self.env}" if self.env else ""
        return f"{self.meta['doc']} (default: {self.shown}{env})".replace("%", "%%")

    def parse(self, raw: Any, where: str) -> Any:
        """The value of this option given as ``raw`` (text, or already typed), checked."""
        parse = self.meta.get("parse")
        try:
            if parse is not None and _optional_of(self.tp) is not None and _is_none_word(raw):
                value = None
            elif parse is None:
                value = coerce(self.tp, raw, where)
            elif self.meta.get("repeat"):
                items = raw.split(",") if isinstance(raw, str) else raw
                value = tuple(parse(v.strip()) if isinstance(v, str) else v for v in items)
            else:
                value = parse(raw) if isinstance(raw, str) else raw
        except (ValueError, argparse.ArgumentTypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None
        choices = self.meta.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        check = self.meta.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(f"{where}: {check[1]}, got {raw!r}")
        return value


def specs(cls: type, env_prefix: str | None = ENV_PREFIX) -> list[Spec]:
    """Every option of a settings class, groups flattened, in declaration order."""
    out: list[Spec] = []
    _walk(cls, (), "", env_prefix, None, out)
    flags = [s for spec in out for s in (spec.flag, *spec.meta.get("aliases", ()))]
    assert len(flags) == len(set(flags)), f"{cls.__name__}: two options share a flag"
    return out


def _walk(cls: type, path: tuple[str, ...], prefix: str, env_prefix: str | None, title: str | None,
          out: list[Spec]) -> None:  # fmt: skip
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            sub = f.metadata["prefix"]
            _walk(hints[f.name], (*path, f.name), f"{prefix}{sub}_" if sub else prefix, env_prefix,
                  f.metadata.get("title") or f.name, out)  # fmt: skip
            continue
        assert "doc" in f.metadata, f"{cls.__name__}.{f.name} is not declared with opt()"
        name = prefix + f.name
        env = f"{env_prefix}{name.upper()}" if env_prefix is not None and f.metadata.get("env", True) else None
        out.append(Spec((*path, f.name), f, hints[f.name], "--" + name.replace("_", "-"), env, title))


# -- argparse --------------------------------------------------------------------------------------
class Switch(argparse.Action):
    """``--x`` / ``--no-x`` for a boolean option; ``--x true|false`` (the older form) still works."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        strings = [s for o in option_strings for s in (o, "--no-" + o[2:])]
        super().__init__(strings, dest, nargs="?", metavar="BOOL", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            values = False
        setattr(namespace, self.dest, True if values is None else values)  # a string: coerced (and named) later


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps a command's example in its epilog as written and shows a switch as ``--x, --no-x``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, Switch):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


def add_flags(parser: argparse.ArgumentParser, options: list[Spec]) -> None:
    """One flag per option, unset by default so that lower-precedence sources keep their say."""
    parser.formatter_class = HelpFormatter
    groups: dict[str | None, Any] = {}
    for spec in options:
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group) if spec.group else parser
        target = groups[spec.group]
        names = [spec.flag, *spec.meta.get("aliases", ())]
        if spec.is_switch:
            target.add_argument(*names, dest=spec.dest, action=Switch, default=None, help=spec.help())
        elif spec.meta.get("repeat"):
            target.add_argument(*names, dest=spec.dest, action="append", default=None, metavar=spec.metavar,
                                help=spec.help() + " (repeatable)")  # fmt: skip
        elif spec.meta.get("const") is not None:
            target.add_argument(*names, dest=spec.dest, nargs="?", const=spec.meta["const"], default=None,
                                metavar=spec.metavar, help=spec.help())  # fmt: skip
        else:
            target.add_argument(*names, dest=spec.dest, default=None, metavar=spec.metavar, help=spec.help())


def given(args: argparse.Namespace, options: list[Spec]) -> dict[tuple[str, ...], Any]:
    """The options set by a flag on this command line, as their raw values."""
    return {s.path: getattr(args, s.dest) for s in options if getattr(args, s.dest, None) is not None}


def build(cls: type[T], options: list[Spec], sources: Iterable[tuple[str, Mapping[tuple[str, ...], Any]]]) -> T:
    """The settings object from raw values by source (lowest precedence first); every problem, each
    naming its option the way its source spelled it, in one ConfigError."""
    values: dict[tuple[str, ...], Any] = {}
    errors: list[str] = []
    by_path = {s.path: s for s in options}
    for source, raw_values in sources:
        for path, raw in raw_values.items():
            spec = by_path[path]
            where = spec.flag if source == "flag" else spec.env if source == "env" else f"{source}: {spec.name}"
            try:
                values[path] = spec.parse(raw, str(where))
            except ConfigError as exc:
                errors.extend(exc.errors)
    if errors:
        raise ConfigError(*errors)
    try:
        return _construct(cls, (), values)
    except ConfigError:
        raise
    except ValueError as exc:  # a check between options, in the class's __post_init__
        raise ConfigError(str(exc)) from None


def _construct(cls: type[T], path: tuple[str, ...], values: Mapping[tuple[str, ...], Any]) -> T:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        here = (*path, f.name)
        if f.metadata.get("group"):
            kwargs[f.name] = _construct(typing.get_type_hints(cls)[f.name], here, values)
        elif here in values:
            kwargs[f.name] = values[here]
    return cls(**kwargs)


def value_at(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def non_defaults(obj: Any, within_paths: Iterable[tuple[str, ...]] | None = None) -> list[str]:
    """The flags of the options ``obj`` sets to other than their defaults (optionally only those under
    the given paths): what a command names when it refuses options that would do nothing."""
    wanted = None if within_paths is None else tuple(within_paths)
    out = []
    for spec in specs(type(obj), None):
        if wanted is not None and not any(spec.path[: len(p)] == p for p in wanted):
            continue
        if value_at(obj, spec.path) != spec.default:
            out.append(spec.flag)
    return out


def from_environment(options: list[Spec], env: Mapping[str, str]) -> dict[tuple[str, ...], Any]:
    return {s.path: env[s.env] for s in options if s.env and s.env in env}


def describe(options: list[Spec], qualified: bool = True) -> str:
    """Markdown table of the options: name, flag and environment variable, default, meaning."""
    rows = ["| option | flag / env | default | meaning |", "|---|---|---|---|"]
    for s in options:
        flag = f"{s.flag}` / `--no-{s.flag[2:]}" if s.is_switch else s.flag
        for alias in s.meta.get("aliases", ()):
            flag += f"` / `{alias}"
        where = f"`{flag}`" + (f" / `{s.env}`" if s.env else "")
        name = s.name if qualified else s.path[-1]
        rows.append(f"| `{name}` | {where} | `{s.shown}` | {s.meta['doc']} |")
    return "\n".join(rows)


class Command:
    """The options of one command, generated from its settings class (``prefix``: the environment's,
    e.g. ``BUDGET_ROUTER_PLAN_``)."""

    def __init__(self, cls: type, env_prefix: str) -> None:
        self.cls = cls
        self.env_prefix = env_prefix
        self.options = specs(cls, env_prefix)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_flags(parser, self.options)

    def from_args(self, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Any:
        environment = os.environ if env is None else env
        return build(self.cls, self.options, [("env", from_environment(self.options, environment)),
                                              ("flag", given(args, self.options))])  # fmt: skip

    def describe(self) -> str:
        return describe(self.options, qualified=False)


def command_env_prefix(command: str) -> str:
    """``plan`` -> ``BUDGET_ROUTER_PLAN_``: every command's variables under one prefix of its own, so
    the router's loader can tell them from its own ``BUDGET_ROUTER_<SECTION>_`` ones."""
    return f"{ENV_PREFIX}{command.upper().replace('-', '_')}_"


# The commands whose options also come from the environment, each under its own prefix
# (``command_env_prefix``): variables the router's own loader must leave alone.
COMMAND_SCOPES = ("up", "plan", "emulate", "envoy-config", "deploy-config", "docker-watchdog")
