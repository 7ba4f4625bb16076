"""Translate the typed config into the pure algorithm's parameter objects (one mapping, one place)."""

from __future__ import annotations

from extproc.algorithm import BudgetParams, BudgetRouter, CalibrationParams, CategoryParams, DispatchPolicy
from extproc.config import Config, parse_priors


def build_router(cfg: Config) -> BudgetRouter:
    r, c, s, k = cfg.routing, cfg.calibration, cfg.spillover, cfg.categories
    return BudgetRouter(
        budget=BudgetParams(
            default_output_tokens=r.default_output_tokens,
            framing_per_request=r.framing_per_request,
            framing_per_message=r.framing_per_message,
            framing_per_tool=r.framing_per_tool,
            image_tokens=r.image_tokens,
        ),
        policy=DispatchPolicy(
            b_short=r.b_short,
            short_context=r.short_context,
            long_context=r.long_context,
            spillover=s.enabled,
            spill_threshold=s.threshold,
        ),
        calibration=CalibrationParams(
            beta=c.beta,
            gamma=c.gamma,
            cold_start=c.cold_start,
            min_samples=c.min_samples,
            min_ratio=c.min_ratio,
            max_ratio=c.max_ratio,
            outlier_factor=c.outlier_factor,
            converged_samples=c.converged_samples,
            priors=tuple(parse_priors(c.priors).items()),
        ),
        categories=CategoryParams(
            enabled=tuple(k.enabled),
            default=k.default,
            cjk_share=k.cjk_share,
            mixed_share=k.mixed_share,
            code_score=k.code_score,
        ),
    )
