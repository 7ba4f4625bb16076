"""Workloads shared by the embedded stack's replay and the fleet simulator: traces (Azure 2023 CSVs,
total-token CDFs, JSONL, a synthetic heavy tail), arrival processes, a category mix, real-text prompts
of an exact token count, and measured bytes-per-token distributions.

Typical use::

    from extproc.workload import WorkloadSpec, build_workload, request_body
    requests = build_workload(WorkloadSpec("azure-conv", rate=20, duration_s=60, seed=1))
    body = request_body(requests[0], model="m", seed=0)

Prompt building imports the BPE lazily (``extproc.workload.prompts``), so trace handling stays light.
"""

from extproc.workload.mix import CATEGORIES, CategoryMix, assign_categories
from extproc.workload.spec import BUILTIN_TRACES, WorkloadSpec, build_workload, load_source
from extproc.workload.trace import Trace, TraceRequest

__all__ = [
    "BUILTIN_TRACES",
    "CATEGORIES",
    "CategoryMix",
    "Trace",
    "TraceRequest",
    "WorkloadSpec",
    "assign_categories",
    "build_workload",
    "load_source",
    "request_body",
    "sample_bytes_per_token",
]


def __getattr__(name: str) -> object:
    if name == "request_body":
        from extproc.workload.prompts import request_body

        return request_body
    if name == "sample_bytes_per_token":
        from extproc.workload.bytes_per_token import sample_bytes_per_token

        return sample_bytes_per_token
    raise AttributeError(name)
