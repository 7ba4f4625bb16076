"""Bytes-per-token distributions per content category, measured with the real BPE on the shipped corpus,
so the fleet simulator can give each simulated request realistic text bytes (the router estimates
tokens from bytes; the error of that estimate is what routing has to survive).

Measurement: for each encoding, category and window size, cut ``samples`` prompts of exactly that many
tokens at random corpus positions (``prompts.prompt_text``) and record UTF-8 bytes / tokens. Windows of
several sizes matter because short prompts vary far more than long ones. Long windows overlap heavily
in a corpus of 25-45K tokens per category, so their spread is a lower bound on real traffic's.

Run ``python -m extproc.workload.bytes_per_token`` to re-measure and rewrite
``extproc/data/bytes_per_token.json``; ``--show`` prints the shipped table without measuring.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from extproc.workload.corpus import DEFAULT_ENCODING
from extproc.workload.mix import CATEGORIES

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "bytes_per_token.json"
ENCODINGS = ("cl100k_base", "o200k_base")
WINDOWS = (50, 200, 1000, 4000, 8000)
QUANTILE_LEVELS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def _stats(values: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(values.size),
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 4),
        "quantiles": [round(float(q), 4) for q in np.quantile(values, QUANTILE_LEVELS)],
    }


def measure_ratios(
    category: str, window: int, samples: int, rng: np.random.Generator, encoding: str = DEFAULT_ENCODING
) -> np.ndarray:
    from extproc.workload.prompts import prompt_text  # the BPE tables load only when measuring

    return np.array(
        [len(prompt_text(category, window, rng, encoding).encode("utf-8")) / window for _ in range(samples)]
    )


def measure(
    samples: int = 200,
    seed: int = 0,
    encodings: tuple[str, ...] = ENCODINGS,
    windows: tuple[int, ...] = WINDOWS,
    categories: tuple[str, ...] = CATEGORIES,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {
        "description": "UTF-8 bytes per BPE token of corpus windows of exactly `window` tokens "
        "(extproc/data/corpus); `all` pools every window size equally",
        "generated_by": "python -m extproc.workload.bytes_per_token",
        "seed": seed,
        "samples_per_window": samples,
        "windows": list(windows),
        "quantile_levels": list(QUANTILE_LEVELS),
        "encodings": {},
    }
    for encoding in encodings:
        per_category: dict[str, Any] = {}
        for category in categories:
            by_window = {w: measure_ratios(category, w, samples, rng, encoding) for w in windows}
            per_category[category] = {
                "all": _stats(np.concatenate(list(by_window.values()))),
                "by_window": {str(w): _stats(v) for w, v in by_window.items()},
            }
        result["encodings"][encoding] = per_category
    return result


@dataclass(frozen=True)
class _Dist:
    levels: np.ndarray
    values: np.ndarray
    mean: float

    def sample(self, rng: np.random.Generator, size: int | None) -> np.ndarray | float:
        """Inverse CDF, linear between stored quantiles."""
        u = rng.random(size)
        out = np.interp(u, self.levels, self.values)
        return float(out) if size is None else out


class BytesPerTokenTable:
    """The measured distributions, ready to sample: per encoding, category, and window size."""

    def __init__(self, data: dict[str, Any], source: str = "<dict>") -> None:
        try:
            levels = np.asarray(data["quantile_levels"], dtype=np.float64)
            self.windows = tuple(int(w) for w in data["windows"])
            self._dists: dict[tuple[str, str, int | None], _Dist] = {}
            for encoding, cats in data["encodings"].items():
                for category, entry in cats.items():
                    self._dists[(encoding, category, None)] = self._dist(levels, entry["all"])
                    for w, stats in entry["by_window"].items():
                        self._dists[(encoding, category, int(w))] = self._dist(levels, stats)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a bytes-per-token table ({exc!r})") from None
        self.data = data

    @staticmethod
    def _dist(levels: np.ndarray, stats: dict[str, Any]) -> _Dist:
        values = np.asarray(stats["quantiles"], dtype=np.float64)
        if values.shape != levels.shape or np.any(np.diff(values) < 0) or np.any(values <= 0):
            raise ValueError("quantiles must be positive, non-decreasing and match quantile_levels")
        return _Dist(levels, values, float(stats["mean"]))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> BytesPerTokenTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return cls(data, str(path))

    @property
    def encodings(self) -> list[str]:
        return sorted({k[0] for k in self._dists})

    def categories(self, encoding: str = DEFAULT_ENCODING) -> list[str]:
        return sorted({k[1] for k in self._dists if k[0] == encoding})

    def _window_for(self, prompt_tokens: int | None) -> int | None:
        if prompt_tokens is None or prompt_tokens < 1:
            return None
        return min(self.windows, key=lambda w: abs(math.log(w) - math.log(prompt_tokens)))

    def distribution(self, category: str, encoding: str = DEFAULT_ENCODING, prompt_tokens: int | None = None) -> _Dist:
        dist = self._dists.get((encoding, category, self._window_for(prompt_tokens)))
        if dist is None:
            if encoding not in self.encodings:
                raise ValueError(f"no bytes-per-token data for encoding {encoding!r}; have {self.encodings}")
            raise ValueError(
                f"no bytes-per-token data for category {category!r}; have {', '.join(self.categories(encoding))}"
            )
        return dist

    def sample(
        self,
        category: str,
        n: int,
        rng: np.random.Generator,
        *,
        encoding: str = DEFAULT_ENCODING,
        prompt_tokens: int | None = None,
    ) -> np.ndarray:
        """``n`` draws of bytes per token; ``prompt_tokens`` picks the nearest measured window size
        (short prompts vary more), else all window sizes pooled. Argument order matches the
        planner's ``BytesPerToken`` protocol."""
        return np.asarray(self.distribution(category, encoding, prompt_tokens).sample(rng, int(n)))

    def sample_for_sizes(
        self, category: str, prompt_tokens: np.ndarray, rng: np.random.Generator, *, encoding: str = DEFAULT_ENCODING
    ) -> np.ndarray:
        """One draw per request, each from the window size nearest that request's prompt tokens."""
        sizes = np.asarray(prompt_tokens, dtype=np.float64)
        if sizes.size and sizes.min() < 1:
            raise ValueError("prompt token counts must be >= 1")
        windows = np.array(self.windows, dtype=np.float64)
        nearest = np.abs(np.log(sizes)[:, None] - np.log(windows)[None, :]).argmin(axis=1)
        out = np.empty(sizes.size)
        for i, window in enumerate(self.windows):
            mask = nearest == i
            if mask.any():
                out[mask] = self.sample(category, int(mask.sum()), rng, encoding=encoding, prompt_tokens=window)
        return out

    def mean(self, category: str, encoding: str = DEFAULT_ENCODING) -> float:
        return self.distribution(category, encoding).mean


@lru_cache(maxsize=1)
def default_table() -> BytesPerTokenTable:
    return BytesPerTokenTable.load(DEFAULT_PATH)


def sample_bytes_per_token(
    category: str, rng: np.random.Generator, *, encoding: str = DEFAULT_ENCODING, prompt_tokens: int | None = None
) -> float:
    """One draw from the shipped distribution: multiply by a request's prompt tokens for its text bytes."""
    return float(default_table().distribution(category, encoding, prompt_tokens).sample(rng, None))


def _mean_std(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:>6.3f}±{stats['std']:.2f}".rjust(11)


def format_table(data: dict[str, Any]) -> str:
    levels = data["quantile_levels"]
    at = {q: levels.index(q) for q in (0.05, 0.5, 0.95)}
    windows = data["windows"]
    head = (
        f"{'encoding':<12} {'category':<8} {'mean':>6} {'std':>6} {'p5':>6} {'p50':>6} {'p95':>6} {'n':>6}  "
        + " ".join(f"{'w' + str(w):>11}" for w in windows)
    )
    lines = [head, "-" * len(head)]
    for encoding, cats in data["encodings"].items():
        for category, entry in cats.items():
            a = entry["all"]
            q = a["quantiles"]
            per_window = " ".join(_mean_std(entry["by_window"][str(w)]) for w in windows)
            lines.append(
                f"{encoding:<12} {category:<8} {a['mean']:>6.3f} {a['std']:>6.3f} {q[at[0.05]]:>6.3f} "
                f"{q[at[0.5]]:>6.3f} {q[at[0.95]]:>6.3f} {a['n']:>6}  {per_window}"
            )
    lines.append("(w<N>: mean±std bytes/token of windows of exactly N tokens)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure per-category bytes/token with the real BPE")
    parser.add_argument("--samples", type=int, default=200, help="windows per (encoding, category, size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--show", action="store_true", help="print the table in --out without measuring")
    args = parser.parse_args(argv)
    if args.show:
        print(format_table(BytesPerTokenTable.load(args.out).data))
        return 0
    if args.samples < 2:
        print("bytes_per_token: error: --samples must be >= 2", file=sys.stderr)
        return 2
    started = time.perf_counter()
    data = measure(args.samples, args.seed)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(format_table(data))
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
