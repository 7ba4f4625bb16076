"""One description of a workload (``WorkloadSpec``) and the one function that turns it into requests,
shared by ``budget-router up --replay`` and ``budget-router plan`` so both see identical traffic for
the same spec and seed.

Built-in traces: ``azure-code``, ``azure-conv``, ``azure-both`` (the shipped 2023 Azure files, the last
merged on their clocks) and ``synthetic-heavy-tail`` (see ``synthetic``). Anything else is a path:
``*.csv`` Azure format, ``*.json`` a total-token CDF, ``*.jsonl`` one request per line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from extproc.workload.azure_csv import load_azure_csv
from extproc.workload.cdf import DEFAULT_INPUT_FRACTION, load_cdf, trace_from_totals
from extproc.workload.jsonl import load_jsonl
from extproc.workload.mix import CATEGORIES, CategoryMix, assign_categories
from extproc.workload.synthetic import heavy_tail_trace
from extproc.workload.timing import bound, cycle, poisson, replay
from extproc.workload.trace import Trace, TraceRequest, merge_by_arrival

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
AZURE_DIR = DATA_DIR / "azure-llm-inference-2023"
AZURE_FILES = {
    "code": AZURE_DIR / "AzureLLMInferenceTrace_code.csv",
    "conv": AZURE_DIR / "AzureLLMInferenceTrace_conv.csv",
}
BUILTIN_TRACES = {
    "azure-code": "Azure LLM inference 2023, code service (8,819 requests, 1 h)",
    "azure-conv": "Azure LLM inference 2023, conversation service (19,366 requests, 1 h)",
    "azure-both": "both Azure 2023 files merged by timestamp (28,185 requests)",
    "synthetic-heavy-tail": "the paper's shape: 80% <= 2K total tokens, 92% <= 8K, tail to 64K (untimed)",
}
DEFAULT_SAMPLES = 10_000


@dataclass(frozen=True)
class WorkloadSpec:
    """``rate`` set: Poisson arrivals at that many req/s (the trace is cycled if more requests are
    needed). ``rate`` None: the trace's own timestamps divided by ``speedup`` (at most the trace's
    rows: a replay is not cycled). ``count`` and ``duration_s`` bound the result. ``code_category``
    tags the Azure code trace (None: draw from ``mix`` like every other request without a category)."""

    trace: str
    rate: float | None = None
    speedup: float = 1.0
    count: int | None = None
    duration_s: float | None = None
    seed: int = 0
    mix: CategoryMix = field(default_factory=CategoryMix)
    code_category: str | None = "code"
    input_fraction: float = DEFAULT_INPUT_FRACTION
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.code_category is not None and self.code_category not in CATEGORIES:
            raise ValueError(f"code_category must be one of {', '.join(CATEGORIES)}, got {self.code_category!r}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")

    def wanted(self) -> int | None:
        """How many requests the bounds can let through (None: no bound at all)."""
        if self.count is not None:
            return self.count
        if self.rate is not None and self.duration_s is not None:
            expected = self.rate * self.duration_s
            return int(expected + 8 * math.sqrt(expected) + 16)  # a Poisson count essentially never exceeds
        return None


@lru_cache(maxsize=8)
def _azure(which: str, category: str | None) -> Trace:
    return load_azure_csv(AZURE_FILES[which], category=category, name=f"azure-{which}")


def load_builtin_azure(name: str, code_category: str | None = "code") -> Trace:
    if name == "azure-both":
        return merge_by_arrival(name, [_azure("code", code_category), _azure("conv", None)])
    which = name.removeprefix("azure-")
    if which not in AZURE_FILES:
        raise ValueError(f"unknown Azure trace {name!r}")
    return _azure(which, code_category if which == "code" else None)


def load_source(spec: WorkloadSpec, rng: np.random.Generator) -> Trace:
    """The spec's trace before timing: loaded from a file, or sampled when the source is a distribution."""
    name = spec.trace
    samples = spec.wanted() or DEFAULT_SAMPLES
    if name.startswith("azure-") and name in BUILTIN_TRACES:
        return load_builtin_azure(name, spec.code_category)
    if name == "synthetic-heavy-tail":
        return heavy_tail_trace(
            samples, rng, input_fraction=spec.input_fraction, max_output_tokens=spec.max_output_tokens
        )
    path = Path(name)
    if path.suffix in (".csv", ".json", ".jsonl") and not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    if path.suffix == ".csv":
        return load_azure_csv(path)
    if path.suffix == ".json":
        totals = load_cdf(path).sample_totals(samples, rng)
        return trace_from_totals(path.stem, totals, spec.input_fraction, spec.max_output_tokens)
    if path.suffix == ".jsonl":
        return load_jsonl(path)
    raise ValueError(
        f"unknown trace {name!r}: use one of {', '.join(BUILTIN_TRACES)} "
        "or a .csv (Azure format), .json (total-token CDF) or .jsonl file"
    )


def build_workload(spec: WorkloadSpec) -> list[TraceRequest]:
    """Requests in arrival order with categories filled in; deterministic for a given spec."""
    sizes_rng, timing_rng, mix_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3))
    trace = load_source(spec, sizes_rng)
    if spec.rate is not None:
        wanted = spec.wanted() or len(trace)
        requests = poisson(cycle(trace.requests, wanted, timing_rng), spec.rate, timing_rng)
    else:
        requests = replay(trace, spec.speedup)
    requests = bound(requests, spec.count, spec.duration_s)
    return assign_categories(requests, spec.mix, mix_rng)
