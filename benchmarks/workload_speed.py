"""Speed of the workload layer, the figures behind its targets: loading both Azure CSVs well under a
second, a 60K-token prompt well under a second, and building 100,000 simulator requests quickly.

Run: ``python benchmarks/workload_speed.py``. Each figure is the best of a few repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from extproc.workload.azure_csv import load_azure_csv
from extproc.workload.bytes_per_token import default_table
from extproc.workload.corpus import corpus_tokens
from extproc.workload.prompts import prompt_text
from extproc.workload.spec import AZURE_FILES, WorkloadSpec, build_workload
from extproc.workload.trace import merge_by_arrival


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    def load_both() -> None:
        merge_by_arrival(
            "both", [load_azure_csv(AZURE_FILES["code"], category="code"), load_azure_csv(AZURE_FILES["conv"])]
        )

    print(f"load + merge both Azure CSVs (28,185 rows): {best_of(load_both) * 1000:8.1f} ms")
    for trace in ("azure-both", "synthetic-heavy-tail"):
        spec = WorkloadSpec(trace, rate=1000.0, count=100_000, seed=1)
        print(f"build_workload {trace:<21} 100,000 req: {best_of(lambda s=spec: build_workload(s)) * 1000:8.1f} ms")

    started = time.perf_counter()
    for category in ("prose", "code", "cjk"):
        corpus_tokens(category)
    print(f"first use: encode the corpus (cl100k_base):    {(time.perf_counter() - started) * 1000:8.1f} ms")
    for category in ("prose", "code", "cjk", "mixed"):
        seconds = best_of(lambda c=category: prompt_text(c, 60_000, seed=1))
        print(f"prompt_text {category:<6} 60,000 tokens:          {seconds * 1000:8.1f} ms")

    sizes = [r.prompt_tokens for r in build_workload(WorkloadSpec("azure-conv", rate=10.0, count=500, seed=2))]
    started = time.perf_counter()
    for i, n in enumerate(sizes):
        prompt_text("prose", n, seed=i)
    per = (time.perf_counter() - started) / len(sizes)
    print(f"prompt_text at Azure conv sizes (mean {np.mean(sizes):.0f} tok): {per * 1000:8.2f} ms/prompt")

    table = default_table()
    rng = np.random.default_rng(0)
    seconds = best_of(lambda: table.sample("prose", 100_000, rng))
    print(f"bytes/token draws, 100,000 vectorised:         {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
