"""PNG plots of a plan: the traffic CDF with the threshold, saving vs B_short, GPUs per pool."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

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
    b = [t.b_short for t in rep.thresholds]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(b, [100 * t.closed_form_saving for t in rep.thresholds], "o--", label="closed form α(1−1/ρ)")
    sim = [100 * t.saving if t.saving is not None else np.nan for t in rep.thresholds]
    ax.plot(b, sim, "s-", label="simulated (SLO-sized fleets)")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel("GPU saving vs homogeneous (%)")
    ax.set_title(f"{rep.trace} @ {rep.settings['rate']:g} req/s, {rep.settings['profile']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gpus(rep: PlanReport, path: Path) -> None:
    labels = ["homog."] + [str(t.b_short) for t in rep.thresholds]
    short = [0] + [t.dual.pools[0].gpus for t in rep.thresholds]
    long = [rep.homogeneous.gpus] + [t.dual.pools[1].gpus for t in rep.thresholds]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x, long, label="long pool (homogeneous: all)", color="tab:blue")
    ax.bar(x, short, bottom=long, label="short pool", color="tab:orange")
    for i, t in enumerate(rep.thresholds, start=1):
        if not t.dual.feasible:
            ax.text(i, long[i] + short[i], "SLO\nmissed", ha="center", va="bottom", fontsize=7, color="tab:red")
    ax.set_xticks(x, labels)
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel("GPUs")
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
