"""The suite's own guarantees: no test runs unbounded, no property test fails on a slow core, and a
config cannot be changed under a router that already read it (the cause of the suite's one hang)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import settings

from extproc.config import Config, load_config, with_options


def test_every_test_has_a_timeout(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.getini("timeout_method") == "signal"  # fails the test, the run goes on


def test_property_tests_have_no_wall_clock_deadline() -> None:
    assert settings().deadline is None


def test_config_sections_are_frozen_and_variants_are_copies() -> None:
    cfg = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.calibration.converged_sample_rate = 0.0  # type: ignore[misc]
    variant = with_options(cfg, calibration={"converged_sample_rate": 0.0}, routing={"b_short": 4096})
    assert variant.calibration.converged_sample_rate == 0.0 and variant.routing.b_short == 4096
    assert cfg.calibration.converged_sample_rate == Config().calibration.converged_sample_rate
    assert variant.server == cfg.server
