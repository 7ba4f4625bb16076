"""PNG plots of a plan: the traffic CDF with the thresholds, saving vs B_short per provisioning, GPUs
per pool, each side's latency CDFs, and what moves the answer."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from extproc.planner.plan import PlanReport
from extproc.planner.plan_report import PLOTS, sensitivity_summary

COLOURS = {"tuned": "tab:orange", "paper": "tab:purple"}


def plot_cdf(totals: np.ndarray, rep: PlanReport, path: Path) -> None:
    xs = np.sort(totals)
    ys = np.arange(1, len(xs) + 1) / len(xs)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, ys, lw=1.5, label=f"{rep.trace}: total tokens")
    comp = rep.comparisons[rep.primary]
    chosen = comp.verdicts[comp.best].b_short if comp.best is not None else None
    for b in rep.thresholds:
        picked = b == chosen
        if picked:
            ax.axvline(b, color="tab:red", lw=1.5, ls="-")
        else:
            ax.axvline(b, color="0.75", lw=0.8, ls=":")
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


def saving_figure(rep: PlanReport) -> Figure:
    """Saving vs B_short per provisioning: mean with the replications' range as error bars, the pick
    starred and the disqualified thresholds crossed out, so a disqualified high point cannot read as
    the answer."""
    b = np.array(rep.thresholds)
    fig, ax = plt.subplots(figsize=(7, 4))
    closed = [t.closed_form_saving for t in rep.replicates[0].thresholds[rep.primary]]
    ax.plot(b, [100 * c for c in closed], "o--", color="tab:blue", label=f"closed form α(1−1/ρ) ({rep.primary})")
    n = len(rep.replicates)
    for prov, comp in rep.comparisons.items():
        mean = np.array([100 * v.saving.mean if v.saving is not None else np.nan for v in comp.verdicts])
        lo = np.array([100 * v.saving.lo if v.saving is not None else np.nan for v in comp.verdicts])
        hi = np.array([100 * v.saving.hi if v.saving is not None else np.nan for v in comp.verdicts])
        colour = COLOURS.get(prov, "tab:green")
        ax.plot(b, mean, "-", color=colour, lw=1)
        ok = np.array([v.qualified for v in comp.verdicts])
        ax.errorbar(
            b[ok],
            mean[ok],
            yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]],
            fmt="s",
            color=colour,
            capsize=3,
            label=f"{prov}: simulated, SLO-sized (mean, range of {n} seed{'s' if n > 1 else ''})",
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
                label=f"{prov}: disqualified (SLO missed or rejects > --max-reject)",
            )
        if comp.best is not None:
            ax.plot(
                [b[comp.best]],
                [mean[comp.best]],
                "*",
                color="tab:red",
                ms=16,
                zorder=5,
                label=f"{prov} pick: B_short={b[comp.best]}",
            )
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlim(b.min() / 1.4, b.max() * 1.4)  # also when no threshold has a finite saving to autoscale on
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel("GPU saving vs homogeneous (%)")
    ax.set_title(f"{rep.trace} @ {rep.settings['rate']:g} req/s, {rep.settings['profile']}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gpus_figure(rep: PlanReport) -> Figure:
    """GPUs per pool of each sized fleet (first seed), each bar labelled with the limit that sized each
    of its pools (homogeneous: one; dual: short / long), so the plot says why a fleet is as large as it is."""
    r0 = rep.replicates[0]
    labels, short, long, marks, binds = [], [], [], [], []
    for prov, comp in rep.comparisons.items():
        h = r0.homogeneous[prov]
        labels.append(f"{prov}\nhomog.")
        short.append(0)
        long.append(h.gpus)
        marks.append("")
        binds.append("/".join(h.binding))
        for i, (t, v) in enumerate(zip(r0.thresholds[prov], comp.verdicts, strict=True)):
            labels.append(f"{prov}\n{t.b_short}")
            short.append(t.dual.pool_gpus[0])
            long.append(t.dual.pool_gpus[1])
            marks.append("disq." if not v.qualified else ("pick" if i == comp.best else ""))
            binds.append(" / ".join(t.dual.binding))
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(labels)), 4))
    ax.bar(x, long, label="long pool (homogeneous: all)", color="tab:blue")
    ax.bar(x, short, bottom=long, label="short pool", color="tab:orange")
    for i, (m, b) in enumerate(zip(marks, binds, strict=True)):
        text = "\n".join(t for t in (m, f"binds: {b}" if b else "") if t)
        if text:
            colour = "tab:red" if m else "0.2"
            ax.text(i, long[i] + short[i], text, ha="center", va="bottom", fontsize=6, color=colour)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel(f"GPUs (seed {r0.seed})")
    ax.set_ylim(0, 1.15 * max([*(a + b for a, b in zip(long, short, strict=True)), 1]))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def latency_figure(rep: PlanReport) -> Figure:
    """Fleet-wide TTFT, TPOT and ITL CDFs of each sized fleet (seed 0) at the pick (or the first B_short)."""
    r0 = rep.replicates[0]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for prov, comp in rep.comparisons.items():
        i = comp.best if comp.best is not None else 0
        t = r0.thresholds[prov][i]
        for fleet, ls, name in ((r0.homogeneous[prov], "--", "homogeneous"), (t.dual, "-", f"dual B={t.b_short}")):
            cdf = fleet.cdf
            if not cdf:
                continue
            q = np.array(cdf["quantiles"]) / 100.0
            for ax, key, unit in zip(axes, ("ttft_s", "tpot_s", "itl_s"), (1.0, 1000.0, 1000.0), strict=True):
                vals = np.array([v if v is not None and math.isfinite(v) else np.nan for v in cdf[key]]) * unit
                ax.plot(vals, q, ls, color=COLOURS.get(prov, "tab:green"), label=f"{prov} {name}")
    for ax, title in zip(axes, ("TTFT (s)", "TPOT per request (ms)", "ITL per token (ms)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel("share of requests / tokens")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{rep.trace}: fleet-wide latency CDFs, seed {r0.seed}", fontsize=9)
    fig.tight_layout()
    return fig


def sensitivity_figure(rep: PlanReport) -> Figure:
    """One bar per knob from its lowest to its highest saving; the plan's saving as a line."""
    summary = [s for s in sensitivity_summary(rep.sensitivity) if math.isfinite(s[1])]
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(4, len(summary)) + 1))
    for y, (_knob, lo, hi, _) in enumerate(reversed(summary)):
        ax.barh(y, 100 * (hi - lo), left=100 * lo, color="tab:orange", height=0.6)
        ax.text(100 * hi, y, f" {100 * lo:.0f}..{100 * hi:.0f} %", va="center", fontsize=7)
    ax.set_yticks(range(len(summary)), [s[0] for s in reversed(summary)], fontsize=7)
    if rep.sensitivity and math.isfinite(rep.sensitivity[0].saving):
        ax.axvline(100 * rep.sensitivity[0].saving, color="tab:red", lw=1, label="the plan (screened)")
        ax.legend(fontsize=7)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel("saving vs homogeneous (%), screening estimate")
    ax.set_title(f"What moves the answer: {rep.trace}, B_short={rep.sensitivity_b_short}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(totals: np.ndarray, rep: PlanReport, out: Path) -> list[Path]:
    paths = [out / name for name in PLOTS]
    plot_cdf(totals, rep, paths[0])
    _save(saving_figure(rep), paths[1])
    _save(gpus_figure(rep), paths[2])
    _save(latency_figure(rep), paths[3])
    _save(sensitivity_figure(rep), paths[4])
    return paths
