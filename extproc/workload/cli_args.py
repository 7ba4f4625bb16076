"""The workload options, declared once for every command that drives traffic (``up --replay``, ``plan``),
so a spec written for the demo means the same thing to the planner. Each command adds its own trace
option (``--replay`` for ``up``, ``--trace`` for ``plan``) and nests these as a group."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.options import ConfigError, above, at_least, opt
from extproc.workload.cdf import DEFAULT_INPUT_FRACTION
from extproc.workload.mix import CATEGORIES, DEFAULT_WEIGHTS, CategoryMix
from extproc.workload.spec import BUILTIN_TRACES, WorkloadSpec

TRACE_HELP = f"{', '.join(BUILTIN_TRACES)}, or a .csv (Azure), .json (CDF) or .jsonl file"


@dataclass(frozen=True)
class WorkloadOptions:
    rate: float | None = opt(
        None, "Re-time as Poisson arrivals at this many req/s.", "REQ/S", check=above(0),
        shown="the trace's own clock",
    )  # fmt: skip
    speedup: float = opt(1.0, "Without --rate: divide the trace's own arrival times by this factor.", check=above(0))
    count: int | None = opt(None, "Stop after this many requests.", aliases=("--requests",), check=at_least(1))
    duration: float | None = opt(None, "Only requests arriving in the first SECONDS.", "SECONDS", check=above(0))
    workload_seed: int = opt(0, "Seed for sizes, arrivals and categories.", aliases=("--seed",))
    category_mix: CategoryMix = opt(
        CategoryMix(), "Category weights for requests the trace does not categorise.", "NAME=WEIGHT,...",
        parse=CategoryMix.parse, aliases=("--mix",), shown=",".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items()),
        example="cjk=1",
    )  # fmt: skip
    code_category: str = opt(
        "code", "Category of the Azure code trace's requests ('mix': draw from --category-mix).",
        choices=(*CATEGORIES, "mix"),
    )  # fmt: skip
    input_fraction: float = opt(
        DEFAULT_INPUT_FRACTION, "CDF and synthetic traces: share of each total that is prompt.",
        check=(lambda v: 0.0 < v < 1.0, "must be in (0, 1)"),
    )  # fmt: skip
    max_output_tokens: int | None = opt(
        None, "CDF and synthetic traces: cap on output tokens (the excess goes to the prompt).", check=at_least(1)
    )

    def spec(self, trace: str) -> WorkloadSpec:
        """The workload these options describe for ``trace``."""
        if self.rate is not None and self.speedup != 1.0:
            raise ConfigError("--speedup re-times the trace's own clock; with --rate it would do nothing")
        return WorkloadSpec(
            trace=trace,
            rate=self.rate,
            speedup=self.speedup,
            count=self.count,
            duration_s=self.duration,
            seed=self.workload_seed,
            mix=self.category_mix,
            code_category=None if self.code_category == "mix" else self.code_category,
            input_fraction=self.input_fraction,
            max_output_tokens=self.max_output_tokens,
        )
