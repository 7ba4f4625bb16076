"""Shared fixtures. End-to-end fixtures start the real embedded stack (Envoy + router + two emulated
pools) on free loopback ports with the emulators' latency model off, and stop every process again.

The session stack is shared by the tests that only route and compare bytes; tests that change the
router's life (kill, restart, a special ``B_short``) or need cold calibration start their own via
``start_stack`` in a module-scoped fixture. A stack starts in about a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from extproc.stack.stack import Stack, StackOptions

# Hypothesis: no per-example deadline anywhere (a loaded CI core makes any wall-clock deadline a flake;
# the per-test timeout bounds a runaway test instead). CI also derandomises, so a failure there
# reproduces with the same examples on a developer's machine; locally each run explores new ones.
# Pick one with HYPOTHESIS_PROFILE=dev|ci.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True}
settings.register_profile("dev", **_COMMON)
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

FROZEN_TIME = 1_700_000_000  # emulator "created" field, so responses compare byte for byte
SEED = 7


@contextmanager
def start_stack(tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[Stack]:
    """A running stack for the duration of the ``with``; its run dir (logs, envoy.yaml, calibration
    state) stays under pytest's temporary directory for post-mortems."""
    defaults: dict[str, Any] = {"latency_scale": 0.0, "seed": SEED, "frozen_time": FROZEN_TIME}
    opts = StackOptions(run_dir=tmp_path_factory.mktemp(name), **{**defaults, **options})
    with Stack(opts) as stack:
        yield stack


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory, "stack") as stack:
        yield stack
