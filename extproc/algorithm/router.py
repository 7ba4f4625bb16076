"""The whole algorithm behind one small facade: shape in, estimate and decision out; usage in, learning."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.algorithm.budget import BudgetParams, Estimate, attribute, estimate
from extproc.algorithm.calibration import CalibrationParams, Calibrator, Observation
from extproc.algorithm.categories import Categorizer, CategoryParams
from extproc.algorithm.dispatch import Decision, DispatchPolicy, decide
from extproc.algorithm.request_shape import RequestShape


@dataclass(frozen=True, slots=True)
class Learned:
    category: str
    observation: Observation
    estimated_prompt_tokens: int
    error_pct: float  # signed: (estimate - actual) / actual * 100 at the ratio used for routing


class BudgetRouter:
    def __init__(
        self,
        budget: BudgetParams | None = None,
        policy: DispatchPolicy | None = None,
        calibration: CalibrationParams | None = None,
        categories: CategoryParams | None = None,
    ) -> None:
        self.budget = budget or BudgetParams()
        self.policy = policy or DispatchPolicy()
        self.categorizer = Categorizer(categories)
        self.calibrator = Calibrator(calibration, self.categorizer.params.enabled)

    def estimate(self, shape: RequestShape) -> Estimate:
        return estimate(shape, self.calibrator.ratio, self.budget)

    def route(
        self, shape: RequestShape, short_pressure: float = 0.0, long_pressure: float = 0.0
    ) -> tuple[Estimate, Decision]:
        est = self.estimate(shape)
        return est, decide(est.total, self.policy, short_pressure, long_pressure, est.output_defaulted)

    def learn(self, shape: RequestShape, prompt_tokens: int, routed: Estimate | None = None) -> Learned:
        """Feed one observed ``usage.prompt_tokens`` back; ``routed`` is the estimate made at request time."""
        means = lambda c: self.calibrator.state(c).mean  # noqa: E731 - tiny adapter
        category, nbytes, tokens = attribute(shape, prompt_tokens, means, self.budget)
        est = routed.prompt_tokens if routed is not None else self.estimate(shape).prompt_tokens
        error = (est - prompt_tokens) / prompt_tokens * 100.0 if prompt_tokens > 0 else 0.0
        return Learned(category, self.calibrator.observe(category, nbytes, tokens), est, error)
