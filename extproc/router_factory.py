"""Translate the typed config into the pure algorithm's parameter objects (one mapping, one place).

Parameters take the value of the config option with the same name, so a new option reaches the
algorithm by giving both the same name; only the few whose names or types differ are spelled out.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from extproc.algorithm import (
    BudgetParams,
    BudgetRouter,
    CalibrationParams,
    CapacityParams,
    CategoryParams,
    DispatchPolicy,
    InFlightPressure,
    LivePressure,
    PressureSource,
)
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.exact_band import ExactBand, ExactBandParams
from extproc.algorithm.linear_estimator import EstimatorParams
from extproc.config import Config, ConfigError, parse_priors, parse_tokenizers

P = TypeVar("P")


def _same_named(params: type[P], section: object, internal: Iterable[str] = (), **explicit: Any) -> P:
    """``params`` filled from the config section's same-named fields, then ``explicit``.

    Every field of ``params`` must come from somewhere: the section, ``explicit``, or ``internal``
    (an algorithm constant that is deliberately not an operator setting). A field renamed on one side
    only would otherwise fall back to the algorithm's default without a word."""
    names = {f.name for f in dataclasses.fields(params)}  # type: ignore[arg-type]
    values = {n: getattr(section, n) for n in names if hasattr(section, n)}
    unset = names - values.keys() - explicit.keys() - set(internal)
    if unset:
        raise TypeError(
            f"{params.__name__}: {sorted(unset)} not in config section {type(section).__name__}; "
            "add them there, pass them explicitly, or declare them internal"
        )
    return params(**{**values, **explicit})


def build_exact_band(cfg: Config) -> ExactBand | None:
    """The opt-in exact band, or None; a missing tokenizer package is a ConfigError naming the extra."""
    e = cfg.estimator
    if not e.exact_band:
        return None
    params = ExactBandParams(
        tokenizers=parse_tokenizers(e.exact_band), slack_tokens=e.exact_slack_tokens, forgetting=cfg.calibration.beta
    )
    try:
        return ExactBand(params)
    except ValueError as exc:
        raise ConfigError(f"estimator.exact_band: {exc}") from None


def build_router(
    cfg: Config,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    pressure: PressureSource | None = None,
) -> BudgetRouter:
    """The production router for ``cfg`` on ``clock``. Pool pressure is ``pressure`` when given, else
    the engines' scraped load when ``live_load`` is on (``serve`` starts the scraper), else in-flight
    counting against the spillover capacities."""
    s, k = cfg.spillover, cfg.categories
    if pressure is None:
        capacity = _same_named(CapacityParams, s)
        pools = {SHORT: capacity.short_capacity, LONG: capacity.long_capacity}
        live = cfg.live_load
        pressure = (
            LivePressure(pools, live.max_age_s, clock) if live.enabled else InFlightPressure.for_pools(capacity, clock)
        )
    return BudgetRouter(
        budget=_same_named(BudgetParams, cfg.routing, internal=["structured_category"]),
        policy=_same_named(DispatchPolicy, cfg.routing, spillover=s.enabled, spill_threshold=s.threshold),
        calibration=_same_named(
            CalibrationParams, cfg.calibration, priors=tuple(parse_priors(cfg.calibration.priors).items())
        ),
        categories=_same_named(CategoryParams, k, enabled=tuple(k.enabled)),
        estimator=_same_named(
            EstimatorParams,
            cfg.estimator,
            internal=[
                "band_prob",
                "boundary_window",
                "cold_margin",
                "margin_min_tokens",
                "prior_weight",
                "prompt_memory",
            ],
            forgetting=cfg.calibration.beta,
        ),
        exact=build_exact_band(cfg),
        pressure=pressure,
        clock=clock,
        rng=rng,
    )
