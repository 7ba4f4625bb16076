"""The step-cost model fitted to profiled numbers, and how well it fits them.

A vLLM engine step that runs ``t`` batched tokens (decode tokens plus prefill-chunk tokens) costs, besides
attention,

    linear(t)    = W + P · max(0, t − t0)        weight-read floor, then GEMM compute per token
    allreduce(t) = 2 · layers · (a + b · t)       two tensor-parallel all-reduces per layer

The first is the roofline's two regimes joined at a knee: below ``t0`` tokens the GEMMs are bound by
reading the weights, so the step costs the same for 1 or 50 tokens; above it each token adds its FLOPs.
The second has a floor (``2·layers·a``: latency-bound small messages) that no batch size removes.
``fit_profile`` finds W, P and t0 (least squares on relative error, t0 on an integer grid) and a, b from a
CSV of profiled points (``extproc/profiles/fits/*.csv``); ``python -m extproc.planner.step_fit`` prints
the parameters and every point's residual, the numbers the profile YAML quotes.
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

VIDUR_A100_LLAMA3_70B_TP8 = "vidur-a100-llama3-70b-tp8.csv"


@dataclass(frozen=True)
class StepFit:
    source: str
    layers: int
    floor_s: float  # W
    per_token_s: float  # P
    knee_tokens: int  # t0
    allreduce_call_s: float  # a, per all-reduce
    allreduce_call_per_token_s: float  # b, per all-reduce
    linear_points: tuple[tuple[int, float, float], ...]  # (tokens, profiled s, fitted s)
    allreduce_points: tuple[tuple[float, float, float], ...]

    @property
    def allreduce_floor_s(self) -> float:
        return 2 * self.layers * self.allreduce_call_s

    @property
    def allreduce_per_token_s(self) -> float:
        return 2 * self.layers * self.allreduce_call_per_token_s

    @staticmethod
    def _residuals(points: tuple[tuple[float, float, float], ...]) -> tuple[float, float]:
        rel = np.array([fit / got - 1.0 for _, got, fit in points])
        return float(np.sqrt(np.mean(rel**2))), float(np.max(np.abs(rel)))

    @property
    def linear_residuals(self) -> tuple[float, float]:
        """RMS and largest relative error of the fit over the profiled points."""
        return self._residuals(self.linear_points)

    @property
    def allreduce_residuals(self) -> tuple[float, float]:
        return self._residuals(self.allreduce_points)


def _read(path: Path | None) -> tuple[str, list[tuple[str, float, float]]]:
    if path is None:
        text = (resources.files("extproc") / "profiles" / "fits" / VIDUR_A100_LLAMA3_70B_TP8).read_text("utf-8")
        name = VIDUR_A100_LLAMA3_70B_TP8
    else:
        text, name = path.read_text("utf-8"), path.name
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    out = [(r["kind"], float(r["tokens"]), float(r["ms"]) / 1000.0) for r in csv.DictReader(rows)]
    return name, out


def _relative_lstsq(columns: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    a = np.stack(columns, axis=1) / y[:, None]
    coef, *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return coef


def fit_profile(path: Path | None = None, layers: int = 80, max_knee: int = 512) -> StepFit:
    name, rows = _read(path)
    lx = np.array([t for k, t, _ in rows if k == "linear"])
    ly = np.array([s for k, _, s in rows if k == "linear"])
    ax = np.array([t for k, t, _ in rows if k == "allreduce"])
    ay = np.array([s for k, _, s in rows if k == "allreduce"])
    if len(lx) < 3 or len(ax) < 2:
        raise ValueError(f"{name}: needs at least 3 'linear' and 2 'allreduce' points")
    best: tuple[float, int, np.ndarray] | None = None
    for t0 in range(0, max_knee + 1):
        coef = _relative_lstsq([np.ones_like(lx), np.maximum(0.0, lx - t0)], ly)
        rel = (coef[0] + coef[1] * np.maximum(0.0, lx - t0)) / ly - 1.0
        rms = float(np.sqrt(np.mean(rel**2)))
        if best is None or rms < best[0]:
            best = (rms, t0, coef)
    assert best is not None
    _, t0, (w, p) = best
    a, b = _relative_lstsq([np.ones_like(ax), ax], ay)
    return StepFit(
        source=name,
        layers=layers,
        floor_s=float(w),
        per_token_s=float(p),
        knee_tokens=t0,
        allreduce_call_s=float(a),
        allreduce_call_per_token_s=float(b),
        linear_points=tuple((int(t), float(s), float(w + p * max(0.0, t - t0))) for t, s in zip(lx, ly, strict=True)),
        allreduce_points=tuple((float(t), float(s), float(a + b * t)) for t, s in zip(ax, ay, strict=True)),
    )


def report(fit: StepFit) -> str:
    lr, ar = fit.linear_residuals, fit.allreduce_residuals
    lines = [
        f"fit to {fit.source}",
        f"  linear(t) = {1e3 * fit.floor_s:.3f} ms + {1e6 * fit.per_token_s:.2f} us x max(0, t - {fit.knee_tokens})"
        f"   residuals: RMS {100 * lr[0]:.1f} %, max {100 * lr[1]:.1f} %",
        f"  one all-reduce = {1e3 * fit.allreduce_call_s:.4f} ms + {1e6 * fit.allreduce_call_per_token_s:.3f} us x t"
        f"   residuals: RMS {100 * ar[0]:.1f} %, max {100 * ar[1]:.1f} %",
        f"  per step ({2 * fit.layers} all-reduces): floor {1e3 * fit.allreduce_floor_s:.2f} ms, "
        f"{1e6 * fit.allreduce_per_token_s:.2f} us per token",
        "",
        f"  {'tokens':>8} {'profiled ms':>12} {'fitted ms':>10} {'error':>7}",
    ]
    for t, got, fitted in fit.linear_points:
        lines.append(f"  {t:>8} {1e3 * got:>12.2f} {1e3 * fitted:>10.2f} {100 * (fitted / got - 1):>+6.1f}%")
    lines.append(f"  {'tokens':>8} {'all-reduce ms':>12} {'fitted ms':>10} {'error':>7}")
    for share, got, fitted in fit.allreduce_points:
        lines.append(f"  {share:>8.1f} {1e3 * got:>12.4f} {1e3 * fitted:>10.4f} {100 * (fitted / got - 1):>+6.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fit = fit_profile(Path(args[0]) if args else None)
    print(report(fit))
    return 0 if math.isfinite(fit.floor_s) else 1


if __name__ == "__main__":
    raise SystemExit(main())
