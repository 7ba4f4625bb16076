"""PNG plots of a plan: the traffic CDF with the threshold, saving vs B_short, GPUs per pool."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from extproc.planner.plan import PlanReport


def plot_cdf(totals: np.ndarray, rep: PlanReport, path: Path) -> None:
    xs = np.sort(totals)
    ys = np.arange(1, len(xs) + 1) / len(xs)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, ys, lw=1.5, label=f"{rep.trace}: total tokens")
    chosen = rep.thresholds[rep.best].b_short if rep.best is not None else None
    for t in rep.thresholds:
        picked = t.b_short == chosen
        style = {"color": "tab:red", "lw": 1.5, "ls": "-"} if picked else {"color": "0.75", "lw": 0.8, "ls": ":"}
        ax.axvline(t.b_short, **style)
    if chosen is not None:
        alpha = float(np.mean(totals <= chosen))
        ax.annotate(
            f"B_short={chosen}, α={alpha:.3f}",
            (chosen, alpha),
            textcoords="offset points",
            xytext=(8, -14),
            color="tab:red",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("total tokens (prompt + output)")
    ax.set_ylabel("F(tokens)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_saving(rep: PlanReport, path: Path) -> None:
    fig = saving_figure(rep)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def saving_figure(rep: PlanReport) -> Figure:
    """Saving vs B_short: mean with the replications' range as error bars, the pick starred and the
    disqualified thresholds crossed out, so a disqualified high point cannot read as the answer."""
    b = np.array([t.b_short for t in rep.thresholds])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        b, [100 * t.closed_form_saving for t in rep.thresholds], "o--", color="tab:blue", label="closed form α(1−1/ρ)"
    )
    mean = np.array([100 * v.saving.mean if v.saving is not None else np.nan for v in rep.verdicts])
    lo = np.array([100 * v.saving.lo if v.saving is not None else np.nan for v in rep.verdicts])
    hi = np.array([100 * v.saving.hi if v.saving is not None else np.nan for v in rep.verdicts])
    ax.plot(b, mean, "-", color="tab:orange", lw=1)
    ok = np.array([v.qualified for v in rep.verdicts])
    n = len(rep.replicates)
    ax.errorbar(
        b[ok],
        mean[ok],
        yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]],
        fmt="s",
        color="tab:orange",
        capsize=3,
        label=f"simulated, SLO-sized (mean, range of {n} seed{'s' if n > 1 else ''})",
    )
    if (~ok).any():
        ax.errorbar(
            b[~ok],
            mean[~ok],
            yerr=[mean[~ok] - lo[~ok], hi[~ok] - mean[~ok]],
            fmt="x",
            color="0.55",
            capsize=3,
            ms=9,
            label="disqualified (SLO missed or rejects > --max-reject)",
        )
    if rep.best is not None:
        ax.plot(
            [b[rep.best]], [mean[rep.best]], "*", color="tab:red", ms=16, zorder=5, label=f"pick: B_short={b[rep.best]}"
        )
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlim(b.min() / 1.4, b.max() * 1.4)  # also when no threshold has a finite saving to autoscale on
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel("GPU saving vs homogeneous (%)")
    ax.set_title(
        f"{rep.trace} @ {rep.settings['rate']:g} req/s, {rep.settings['profile']}, baseline {rep.settings['baseline']}",
        fontsize=8,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_gpus(rep: PlanReport, path: Path) -> None:
    labels = ["homog."] + [str(t.b_short) for t in rep.thresholds]
    short = [0] + [t.dual.pool_gpus[0] for t in rep.thresholds]
    long = [rep.homogeneous.gpus] + [t.dual.pool_gpus[1] for t in rep.thresholds]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x, long, label="long pool (homogeneous: all)", color="tab:blue")
    ax.bar(x, short, bottom=long, label="short pool", color="tab:orange")
    for i, v in enumerate(rep.verdicts, start=1):
        if not v.qualified:
            ax.bar([i], [long[i] + short[i]], color="none", edgecolor="0.3", hatch="//", lw=0)
            ax.text(i, long[i] + short[i], "disq.", ha="center", va="bottom", fontsize=7, color="tab:red")
        elif i - 1 == rep.best:
            ax.text(
                i, long[i] + short[i], "pick", ha="center", va="bottom", fontsize=8, color="tab:red", fontweight="bold"
            )
    ax.set_xticks(x, labels)
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel(f"GPUs (seed {rep.replicates[0].seed})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(totals: np.ndarray, rep: PlanReport, out: Path) -> list[Path]:
    paths = [out / "cdf.png", out / "saving.png", out / "gpus.png"]
    plot_cdf(totals, rep, paths[0])
    plot_saving(rep, paths[1])
    plot_gpus(rep, paths[2])
    return paths
