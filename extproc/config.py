"""The one typed place for every router setting: defaults, YAML file, environment, CLI flags.

Precedence (lowest to highest): dataclass defaults < YAML file < ``BUDGET_ROUTER_<SECTION>_<KEY>``
environment variables < ``--<section>-<key>`` flags. Flags and env names are derived from the
field names, so a new option is documented and reachable everywhere by adding one field.

Options that tune the algorithm take their defaults from the algorithm's parameter objects
(``BudgetParams``, ``DispatchPolicy``, ``CalibrationParams``, ``CategoryParams``, ``CapacityParams``)
under the same names, so a default is declared once and ``serve``, ``plan`` and the simulator
cannot disagree about it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.algorithm import BudgetParams, CalibrationParams, CapacityParams, CategoryParams, DispatchPolicy
from extproc.algorithm.dispatch import NO_OUTPUT_LIMIT_POLICIES
from extproc.algorithm.exact_band import ExactBandParams
from extproc.algorithm.linear_estimator import ESTIMATOR_KINDS, EstimatorParams
from extproc.envoy_names import LONG_CLUSTER, SHORT_CLUSTER
from extproc.options import ENV_PREFIX, ConfigError, add_flags, given, group, opt, specs
from extproc.options import coerce as _coerce
from extproc.options import describe as describe_options

MIB = 1024 * 1024
# The name the docs and the shipped Envoy configs give the optional decision-reason header
# (``routing.reason_header``); Envoy strips a client's copy whether or not the router sends it.
REASON_HEADER = "x-budget-reason"
_BUDGET, _POLICY, _CAL, _CAT, _CAP, _EST, _EXACT = (
    BudgetParams(),
    DispatchPolicy(),
    CalibrationParams(),
    CategoryParams(),
    CapacityParams(),
    EstimatorParams(),
    ExactBandParams(),
)


def _default_state_file() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "budget-router" / "calibration.json")


@dataclass(frozen=True)
class ServerConfig:
    listen: str = opt(
        "127.0.0.1:9002", "gRPC address for Envoy (host:port). Use 0.0.0.0:9002 in containers.", "HOST:PORT"
    )
    max_message_bytes: int = opt(
        32 * MIB, "gRPC max send/receive message size. Must exceed Envoy's buffered body limit."
    )
    max_request_body_bytes: int = opt(
        4 * MIB,
        "Largest request body the router reads; larger bodies go long unread (reason unparseable, detail "
        "body_too_large). Reading costs ~1-2 ms of router CPU per MiB; raise it for big inline images.",
    )
    max_response_buffer_bytes: int = opt(
        4 * MIB, "Cap on a buffered JSON response or a pending SSE line kept for usage parsing."
    )
    max_held_body_bytes: int = opt(
        256 * MIB,
        "Request and buffered response bytes all exchanges may hold at once; beyond it a request goes long "
        "unread (reason too_complex, detail body_budget) and a response is not read.",
    )
    grace_period_s: float = opt(25.0, "On SIGTERM: NOT_SERVING, then wait this long for streams to drain.")
    workers: int = opt(1, "Router processes sharing the listen port (SO_REUSEPORT).")
    follow_every_status: bool = opt(
        False,
        "Read the status of every response, also of unsampled requests that cannot fail for their size "
        "(one more gRPC message each, ~+30 % router CPU): only the router's retry metric needs it.",
    )
    event_loop: str = opt(
        "auto", "asyncio event loop: auto (uvloop when installed), uvloop or asyncio.", "{auto,uvloop,asyncio}"
    )


@dataclass(frozen=True)
class RoutingConfig:
    header_name: str = opt("x-budget-pool", "Request header the router sets; Envoy routes on it.", "HEADER")
    short_value: str = opt("short", "Header value that selects the short pool.", "VALUE")
    long_value: str = opt("long", "Header value that selects the long pool.", "VALUE")
    reason_header: str = opt(
        "", f"If set (e.g. {REASON_HEADER}), also send the decision reason upstream in this header.", "HEADER"
    )
    b_short: int = opt(_POLICY.b_short, "Threshold B_short: L_total <= b_short goes short (equality goes short).")
    short_context: int = opt(
        _POLICY.short_context, "max_model_len of the short pool; larger budgets can never go short."
    )
    long_context: int = opt(
        _POLICY.long_context, "max_model_len of the long pool; larger budgets go long and are counted."
    )
    default_output_tokens: int = opt(
        _BUDGET.default_output_tokens,
        "Output reserve when a request sets no output limit (max_completion_tokens/max_tokens/max_output_tokens).",
    )
    no_output_limit: str = opt(
        _POLICY.no_output_limit,
        "Requests without an output limit: reserve (route by prompt + default_output_tokens; if that goes short, "
        "vLLM lets the answer run only to the end of the short context) or long (always the long pool).",
        metavar="{" + ",".join(NO_OUTPUT_LIMIT_POLICIES) + "}",
    )
    framing_per_request: int = opt(
        _BUDGET.framing_per_request, "Chat-template tokens added once per request (generation prompt)."
    )
    framing_per_message: int = opt(
        _BUDGET.framing_per_message, "Chat-template tokens added per message (role header, separators)."
    )
    framing_per_tool: int = opt(_BUDGET.framing_per_tool, "Template tokens per tool definition or tool call.")
    image_tokens: int = opt(_BUDGET.image_tokens, "Fixed token cost of one image part.")
    inject_include_usage: bool = opt(
        True, "Add stream_options.include_usage to streaming requests so the router can learn."
    )
    strip_injected_usage: bool = opt(True, "Remove the usage-only SSE chunk again when the client did not ask for it.")
    force_identity_encoding: bool = opt(True, "Send accept-encoding: identity upstream so bodies are readable.")


@dataclass(frozen=True)
class SpilloverConfig:
    enabled: bool = opt(
        _POLICY.spillover, "Send short requests to the long pool while the short pool is over pressure."
    )
    short_capacity: int = opt(
        _CAP.short_capacity,
        "In-flight requests the short pool holds (instances x max_num_seqs); pressure = in-flight/this.",
    )
    threshold: float = opt(_POLICY.spill_threshold, "Spill when short-pool pressure is at or above this value.")
    long_capacity: int = opt(_CAP.long_capacity, "In-flight requests the long pool holds; reported as pressure only.")


@dataclass(frozen=True)
class LiveLoadConfig:
    """Live pool load from the engines' own /metrics; off while no endpoint source is set."""

    short_endpoints: list[str] = opt(
        [], "Short-pool engines to scrape: host:port (metrics at metrics_path) or full URLs, comma-separated."
    )
    long_endpoints: list[str] = opt([], "Long-pool engines to scrape, as short_endpoints.")
    envoy_admin: str = opt(
        "",
        "Envoy admin address (host:port): also scrape every host Envoy lists for the two pool clusters.",
        metavar="HOST:PORT",
    )
    short_cluster: str = opt(
        SHORT_CLUSTER, "Envoy cluster of the short pool (for discovery via envoy_admin).", metavar="CLUSTER"
    )
    long_cluster: str = opt(
        LONG_CLUSTER, "Envoy cluster of the long pool (for discovery via envoy_admin).", metavar="CLUSTER"
    )
    metrics_path: str = opt(
        "/metrics", "Path of the engines' Prometheus page (for host:port endpoints).", metavar="PATH"
    )
    scrape_interval_s: float = opt(0.1, "How often each endpoint is scraped.")
    scrape_timeout_s: float = opt(0.25, "Longest wait for one scrape; a slower endpoint counts a timeout.")
    max_age_s: float = opt(
        0.5, "A pool's scrape older than this is stale: spillover uses the router's own in-flight count."
    )
    discovery_interval_s: float = opt(2.0, "How often Envoy's /clusters is re-read for pool membership.")

    @property
    def enabled(self) -> bool:
        return bool(self.short_endpoints or self.long_endpoints or self.envoy_admin)


@dataclass(frozen=True)
class CalibrationConfig:
    beta: float = opt(_CAL.beta, "EMA weight on the old ratio: c <- beta*c + (1-beta)*c_obs.")
    gamma: float = opt(_CAL.gamma, "Safety factor: c* = c - gamma*sigma (smaller ratio, more tokens, safer).")
    cold_start: float = opt(_CAL.cold_start, "Bytes/token before any observation (and the prior of every category).")
    min_samples: int = opt(_CAL.min_samples, "Observations before a learned ratio may exceed the cold-start ratio.")
    min_ratio: float = opt(_CAL.min_ratio, "Observed bytes/token below this is rejected; c* never goes below it.")
    max_ratio: float = opt(_CAL.max_ratio, "Observed bytes/token above this is rejected; c-hat never exceeds it.")
    outlier_factor: float = opt(
        _CAL.outlier_factor, "Once warmed up, reject observations off the mean by more than this fraction of it."
    )
    converged_samples: int = opt(_CAL.converged_samples, "Samples after which a category counts as converged.")
    converged_sample_rate: float = opt(
        _CAL.converged_sample_rate,
        "Share of responses still observed once a category converged (1.0 = all; lower saves CPU).",
    )
    priors: list[str] = opt(
        [f"{name}={ratio}" for name, ratio in _CAL.priors],
        "Per-category cold start (category=bytes/token); others use cold_start.",
    )
    state_file: str = opt(
        _default_state_file(), "Where learned ratios persist ('' disables).", "PATH",
        shown="$XDG_STATE_HOME/budget-router/calibration.json",
    )  # fmt: skip
    save_interval_s: float = opt(30.0, "How often the state file is written (and merged with peers).")
    instance_id: str = opt(
        "",
        "This router's entry in the state file; '' = <hostname>:<port> (stable across restarts and container "
        "restarts; workers add /w<N>).",
        "ID",
        example="router-a",
    )


@dataclass(frozen=True)
class EstimatorConfig:
    kind: str = opt(
        _EST.kind,
        "Token estimator: linear (v2: a linear model over character-class counts per served model and "
        "category, see docs/estimator.md) or ratio (the paper's EMA bytes/token per category).",
        metavar="{" + ",".join(ESTIMATOR_KINDS) + "}",
    )
    underestimate_prob: float = opt(
        _EST.underestimate_prob, "linear: target share of near-boundary requests routed short although they do not fit."
    )
    fit_forgetting: float = opt(
        _EST.fit_forgetting, "linear: forgetting factor of the online fit (its error margin uses beta)."
    )
    max_models: int = opt(_EST.max_models, "linear: served models learned separately; further models share one bucket.")
    sample_bytes: int = opt(
        _EST.sample_bytes, "linear: bytes of each text the features are counted on (spread chunks)."
    )
    exact_band: list[str] = opt(
        [],
        "Opt-in exact counts near B_short: model=tokenizer items (cl100k_base, o200k_base, llama3, qwen3); "
        "needs pip install 'budget-router[exact]'.",
    )
    exact_slack_tokens: int = opt(
        _EXACT.slack_tokens, "Tokens added to an exact count for template details not yet learned."
    )
    engine_counts: bool = opt(
        False,
        "linear: ask the chosen pool's engine (vLLM POST /tokenize) for the exact prompt count of requests "
        "whose uncertainty band holds B_short; endpoints come from live_load (static or Envoy discovery). "
        "On by default in 'up --engine vllm'.",
    )
    engine_count_timeout_s: float = opt(
        0.02, "Deadline of one engine count; a slower engine's request is routed by the estimate (counted)."
    )
    engine_count_max_in_flight: int = opt(
        16, "Engine counts in flight at once; more band requests are routed by the estimate (counted as busy)."
    )


@dataclass(frozen=True)
class CategoriesConfig:
    enabled: list[str] = opt(list(_CAT.enabled), "Content categories the router learns separately.")
    default: str = opt(_CAT.default, "Category used when detection names one that is not enabled.", "CATEGORY")
    cjk_share: float = opt(_CAT.cjk_share, "Share of CJK code points (of letters) above which text is CJK.")
    mixed_share: float = opt(_CAT.mixed_share, "CJK share above which (but below cjk_share) text is mixed.")
    code_score: float = opt(_CAT.code_score, "Density of code punctuation/keywords above which text is code.")
    odd_share: float = opt(
        _CAT.odd_share,
        "Share of upper-case letters and digits above which nearly spaceless text is odd (random ids, base64, "
        "hex, digit runs): its own category, prior 1.0 bytes/token.",
    )


@dataclass(frozen=True)
class TelemetryConfig:
    traces: bool = opt(False, "Export OpenTelemetry traces over OTLP (OTEL_* env vars are honoured).")
    otlp_endpoint: str = opt("", "OTLP/gRPC endpoint; empty uses OTEL_EXPORTER_OTLP_ENDPOINT.", "HOST:PORT")
    service_name: str = opt("budget-router", "service.name resource attribute.", "NAME")
    metrics_port: int = opt(9464, "Prometheus scrape port (0 = off).")
    metrics_host: str = opt("127.0.0.1", "Address the Prometheus endpoint binds to.", "HOST")
    otlp_metrics: bool = opt(False, "Also push metrics over OTLP.")
    capture_content: bool = opt(False, "Record prompt text in spans (off: never recorded).")
    capture_content_max_bytes: int = opt(
        16384, "Cap on captured prompt text per span; longer content is cut and marked as truncated."
    )
    provider_name: str = opt("vllm", "gen_ai.provider.name on spans: the engine behind the pools.", "NAME")
    json_logs: bool = opt(False, "Log decisions as JSON lines.")
    log_level: str = opt("INFO", "Log level.", "{DEBUG,INFO,WARNING,ERROR,CRITICAL}")
    log_decisions: bool = opt(False, "Log one line per routing decision.")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = group(ServerConfig, prefix="server")
    routing: RoutingConfig = group(RoutingConfig, prefix="routing")
    spillover: SpilloverConfig = group(SpilloverConfig, prefix="spillover")
    live_load: LiveLoadConfig = group(LiveLoadConfig, prefix="live_load")
    calibration: CalibrationConfig = group(CalibrationConfig, prefix="calibration")
    estimator: EstimatorConfig = group(EstimatorConfig, prefix="estimator")
    categories: CategoriesConfig = group(CategoriesConfig, prefix="categories")
    telemetry: TelemetryConfig = group(TelemetryConfig, prefix="telemetry")


def with_options(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` with some options replaced, e.g. ``with_options(cfg, routing={"b_short": 4096})``.

    The config is frozen, so code that derives a variant (the planner's per-threshold routers, a
    test's special router) says so here instead of mutating a config another object already read."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    )


def _sections() -> list[tuple[str, type]]:
    return [(f.name, typing.get_type_hints(Config)[f.name]) for f in dataclasses.fields(Config)]


def _apply(cfg: Config, values: Mapping[str, Mapping[str, Any]], source: str, errors: list[str]) -> None:
    """Set every value it can; each one that cannot be used adds a line to ``errors``."""
    for sname, stype in _sections():
        section_values = values.get(sname) or {}
        if not isinstance(section_values, Mapping):
            errors.append(f"{source}: section '{sname}' must be a mapping")
            continue
        section = getattr(cfg, sname)
        hints = typing.get_type_hints(stype)
        for key, val in section_values.items():
            if key not in hints:
                errors.append(f"{source}: unknown option {sname}.{key}")
                continue
            try:
                # Sections are frozen for everyone else (a value changed after the router was built
                # would silently not apply); the loader alone fills them, layer by layer.
                object.__setattr__(section, key, _coerce(hints[key], val, f"{source}: {sname}.{key}"))
            except ConfigError as exc:
                errors.extend(exc.errors)
    unknown = set(values) - {s for s, _ in _sections()}
    if unknown:
        errors.append(f"{source}: unknown section(s) {sorted(unknown)}")


def parse_priors(items: list[str]) -> dict[str, float]:
    """``["cjk=1.5", ...]`` -> ``{"cjk": 1.5}``; a malformed item is a ConfigError naming it."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(item)
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"calibration.priors: {item!r} is not category=bytes_per_token") from None
    return out


def parse_tokenizers(items: list[str]) -> dict[str, str]:
    """``["llama=llama3", ...]`` -> ``{"llama": "llama3"}``; unknown tokenizers are a ConfigError."""
    from extproc.algorithm.exact_band import ENCODINGS

    out: dict[str, str] = {}
    for item in items:
        model, sep, encoding = item.rpartition("=")
        if not sep or not model.strip() or encoding.strip() not in ENCODINGS:
            raise ConfigError(
                f"estimator.exact_band: {item!r} is not model=tokenizer with a tokenizer of {', '.join(ENCODINGS)}"
            )
        out[model.strip()] = encoding.strip()
    return out


def listen_port(address: str) -> int | None:
    """The port of a ``host:port`` (or ``[v6]:port``) address, None when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]") or not (port.isascii() and port.isdigit()):
        return None
    value = int(port)
    return value if value <= 65535 else None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KNOWN_CATEGORIES = CategoryParams().enabled  # every category the detector can name
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP header name (RFC 9110 token)
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")  # a header value the router sets: visible ASCII, no spaces


def _header_checks(r: RoutingConfig) -> list[tuple[bool, str]]:
    """The routing header's name and values go into Envoy's route match and into every request:
    a CR/LF, a space or an empty value would be a broken header or a route that never matches."""
    return [
        (bool(_HEADER_TOKEN.fullmatch(r.header_name)),
         f"routing.header_name: {r.header_name!r} is not an HTTP header name (letters, digits, -, no spaces or CR/LF)"),
        (not r.reason_header or bool(_HEADER_TOKEN.fullmatch(r.reason_header)),
         f"routing.reason_header: {r.reason_header!r} is not an HTTP header name"),
        (bool(_HEADER_VALUE.fullmatch(r.short_value)),
         f"routing.short_value: {r.short_value!r} must be a non-empty header value of visible ASCII"),
        (bool(_HEADER_VALUE.fullmatch(r.long_value)),
         f"routing.long_value: {r.long_value!r} must be a non-empty header value of visible ASCII"),
    ]  # fmt: skip


def validate(cfg: Config) -> Config:
    """Every option's range and the relations between options; all problems in one ConfigError."""
    sv, r, sp, c, cat, t = cfg.server, cfg.routing, cfg.spillover, cfg.calibration, cfg.categories, cfg.telemetry
    e = cfg.estimator
    raised: list[str] = []  # the checks below that parse and raise, collected with the rest
    priors: dict[str, float] = {}
    for check in (lambda: priors.update(parse_priors(c.priors)), lambda: parse_tokenizers(e.exact_band),
                  lambda: _validate_live_load(cfg.live_load)):  # fmt: skip
        try:
            check()
        except ConfigError as exc:
            raised += exc.errors
    checks = [
        (sv.listen.startswith("unix:") or listen_port(sv.listen) is not None,
         f"server.listen: {sv.listen!r} is not HOST:PORT with a port in 0..65535"),
        (sv.max_message_bytes >= MIB, "server.max_message_bytes must be >= 1 MiB"),
        (sv.max_request_body_bytes > 0, "server.max_request_body_bytes must be > 0"),
        (sv.max_response_buffer_bytes > 0, "server.max_response_buffer_bytes must be > 0"),
        (sv.max_held_body_bytes >= sv.max_request_body_bytes,
         "server.max_held_body_bytes must be >= server.max_request_body_bytes (one body must fit)"),
        (sv.grace_period_s >= 0, "server.grace_period_s must be >= 0"),
        (sv.workers >= 1, "server.workers must be >= 1"),
        (
            sv.workers == 1 or listen_port(sv.listen) != 0,
            "server.workers > 1 needs a fixed port in server.listen (the workers share it)",
        ),
        (sv.event_loop in ("auto", "uvloop", "asyncio"), "server.event_loop must be auto, uvloop or asyncio"),
        (r.short_value != r.long_value, "routing.short_value and long_value must differ"),
        (r.b_short > 0, "routing.b_short must be > 0"),
        (r.short_context > 0, "routing.short_context must be > 0"),
        (r.long_context > 0, "routing.long_context must be > 0"),
        (r.b_short <= r.short_context, f"routing.b_short ({r.b_short}) must be <= routing.short_context"
         f" ({r.short_context}): a budget above the short pool's window cannot go short"),
        (r.default_output_tokens >= 0, "routing.default_output_tokens must be >= 0"),
        (r.no_output_limit in NO_OUTPUT_LIMIT_POLICIES, "routing.no_output_limit must be reserve or long"),
        (r.framing_per_request >= 0, "routing.framing_per_request must be >= 0"),
        (r.framing_per_message >= 0, "routing.framing_per_message must be >= 0"),
        (r.framing_per_tool >= 0, "routing.framing_per_tool must be >= 0"),
        (r.image_tokens >= 0, "routing.image_tokens must be >= 0"),
        (sp.short_capacity > 0, "spillover.short_capacity must be > 0"),
        (sp.long_capacity > 0, "spillover.long_capacity must be > 0"),
        (sp.threshold > 0, "spillover.threshold must be > 0"),
        (0.0 <= c.beta < 1.0, "calibration.beta must be in [0, 1)"),
        (c.gamma >= 0.0, "calibration.gamma must be >= 0"),
        (0.0 < c.min_ratio < c.cold_start <= c.max_ratio,
         "calibration: need 0 < min_ratio < cold_start <= max_ratio"),
        (c.min_samples >= 0, "calibration.min_samples must be >= 0"),
        (c.outlier_factor > 0, "calibration.outlier_factor must be > 0"),
        (c.converged_samples >= 0, "calibration.converged_samples must be >= 0"),
        (0.0 <= c.converged_sample_rate <= 1.0, "calibration.converged_sample_rate must be in [0, 1]"),
        (all(c.min_ratio <= v <= c.max_ratio for v in priors.values()), "calibration.priors out of bounds"
         " (each must be within [min_ratio, max_ratio])"),
        (c.save_interval_s > 0, "calibration.save_interval_s must be > 0"),
        (len(c.instance_id) <= 200 and c.instance_id.isprintable() and "\t" not in c.instance_id,
         "calibration.instance_id must be printable text of at most 200 characters"),
        *_header_checks(r),
        (set(cat.enabled) <= set(KNOWN_CATEGORIES),
         f"categories.enabled: unknown {sorted(set(cat.enabled) - set(KNOWN_CATEGORIES))}; known: "
         f"{', '.join(KNOWN_CATEGORIES)}"),
        (set(priors) <= set(KNOWN_CATEGORIES),
         f"calibration.priors: unknown categories {sorted(set(priors) - set(KNOWN_CATEGORIES))}; known: "
         f"{', '.join(KNOWN_CATEGORIES)}"),
        (bool(cat.enabled), "categories.enabled must name at least one category"),
        (cat.default in cat.enabled, "categories.default must be enabled"),
        (0.0 <= cat.cjk_share <= 1.0, "categories.cjk_share must be in [0, 1]"),
        (0.0 <= cat.mixed_share <= cat.cjk_share, "categories.mixed_share must be in [0, categories.cjk_share]"),
        (cat.code_score >= 0, "categories.code_score must be >= 0"),
        (0.0 < cat.odd_share <= 1.0, "categories.odd_share must be in (0, 1]"),
        (0 <= t.metrics_port <= 65535, f"telemetry.metrics_port: {t.metrics_port} is not in 0..65535 (0 = off)"),
        (t.log_level.upper() in LOG_LEVELS, f"telemetry.log_level: {t.log_level!r} is not one of {LOG_LEVELS}"),
        (t.capture_content_max_bytes >= 64, "telemetry.capture_content_max_bytes must be >= 64"),
        (bool(t.service_name.strip()), "telemetry.service_name must not be empty"),
        (e.kind in ESTIMATOR_KINDS, f"estimator.kind must be one of {', '.join(ESTIMATOR_KINDS)}"),
        (0.0 < e.underestimate_prob < 0.5, "estimator.underestimate_prob must be in (0, 0.5)"),
        (0.0 < e.fit_forgetting <= 1.0, "estimator.fit_forgetting must be in (0, 1]"),
        (e.max_models >= 1, "estimator.max_models must be >= 1"),
        (e.sample_bytes >= 64, "estimator.sample_bytes must be >= 64"),
        (e.exact_slack_tokens >= 0, "estimator.exact_slack_tokens must be >= 0"),
        (not e.exact_band or e.kind == "linear", "estimator.exact_band needs estimator.kind: linear"),
        (not e.engine_counts or e.kind == "linear", "estimator.engine_counts needs estimator.kind: linear"),
        (not e.engine_counts or cfg.live_load.enabled, "estimator.engine_counts needs the engines' addresses: "
         "set live_load.short_endpoints/long_endpoints or live_load.envoy_admin"),
        (e.engine_count_timeout_s > 0, "estimator.engine_count_timeout_s must be > 0"),
        (e.engine_count_max_in_flight >= 1, "estimator.engine_count_max_in_flight must be >= 1"),
    ]  # fmt: skip
    errors = raised + [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError(*errors)
    return cfg


def _validate_live_load(ll: LiveLoadConfig) -> None:
    from extproc.addresses import metrics_url

    checks = [
        (ll.scrape_interval_s > 0, "live_load.scrape_interval_s must be > 0"),
        (ll.scrape_timeout_s > 0, "live_load.scrape_timeout_s must be > 0"),
        (ll.max_age_s >= ll.scrape_interval_s, "live_load.max_age_s must be >= live_load.scrape_interval_s"),
        (ll.discovery_interval_s > 0, "live_load.discovery_interval_s must be > 0"),
        (ll.metrics_path.startswith("/"), "live_load.metrics_path must start with /"),
    ]
    errors = [msg for ok, msg in checks if not ok]
    for name in ("short_endpoints", "long_endpoints", "envoy_admin"):
        value = getattr(ll, name)
        for endpoint in [value] if isinstance(value, str) and value else value if isinstance(value, list) else []:
            try:
                metrics_url(endpoint)
            except ValueError as exc:
                errors.append(f"live_load.{name}: {exc}")
    if errors:
        raise ConfigError(*errors)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the effective config from all sources; raises one ConfigError listing every problem."""
    cfg = Config()
    errors: list[str] = []
    if path:
        try:
            data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        _apply(cfg, data, str(path), errors)
    env_values: dict[str, dict[str, str]] = {}
    for key, val in (os.environ if env is None else env).items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        for sname, _ in _sections():
            if rest.startswith(sname + "_"):
                env_values.setdefault(sname, {})[rest[len(sname) + 1 :]] = val
                break
        else:
            # Not a section of ours: another tool's variable, or a typo that would be ignored
            # silently (BUDGET_ROUTER_ROUTIN_B_SHORT). A near miss of a real option is an error.
            close = difflib.get_close_matches(key, _env_names(), n=1, cutoff=0.85)
            if close:
                errors.append(f"environment: unknown variable {key}; did you mean {close[0]}?")
    _apply(cfg, env_values, "environment", errors)
    if overrides:
        _apply(cfg, overrides, "command line", errors)
    try:
        validate(cfg)  # a value that did not parse kept its valid default: no error repeated for it
    except ConfigError as exc:
        errors += exc.errors
    if errors:
        raise ConfigError(*errors)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently: a setting that looks set in the file would be another)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _env_names() -> list[str]:
    return [spec.env for spec in specs(Config) if spec.env]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one ``--section-key`` flag per option; unset flags leave lower-precedence
    sources alone."""
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=os.environ.get(ENV_PREFIX + "CONFIG"),
        help=f"YAML file with the options below, by section (env: {ENV_PREFIX}CONFIG)",
    )
    add_flags(parser, specs(Config))


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    for (sname, fname), val in given(args, specs(Config)).items():
        overrides.setdefault(sname, {})[fname] = val
    return load_config(getattr(args, "config", None), overrides=overrides)


def describe() -> str:
    """Markdown table of every option with its flag, env var and default (kept in the README)."""
    return describe_options(specs(Config))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
