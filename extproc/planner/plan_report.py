"""The plan as a terminal table and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from extproc.planner.plan import FleetOutcome, PlanReport, Spread


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{1000 * x:.0f}"


def _s(x: float) -> str:
    return "inf" if x == math.inf else ("-" if not math.isfinite(x) else f"{x:.2f}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def _money(x: float) -> str:
    return f"${x / 1e6:.2f}M"


def _range(sp: Spread, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    """min-max across replications, or '-' when there is only one."""
    if len(sp.values) < 2:
        return "-"
    return f"{fmt.format(scale * sp.lo)}..{fmt.format(scale * sp.hi)}"


def _pool_rows(label: str, fleet: FleetOutcome) -> list[str]:
    rows = []
    for pm, util, binding, low in zip(
        fleet.pools, fleet.offered_utilisation, fleet.binding, fleet.low_confidence, strict=True
    ):
        rows.append(
            f"  {label:<16}{pm.pool:<10}{pm.instances:>6}{pm.gpus:>7}{pm.requests:>9}"
            f"{_s(pm.ttft_p50_s):>8}{_s(pm.ttft_p99_s):>8}{_ms(pm.tpot_p50_s):>8}{_ms(pm.tpot_p99_s):>8}"
            f"{pm.preemptions_per_1k:>9.1f}{pm.rejected_over_context + pm.rejected_queue_full:>7}"
            f"{util:>7.2f}{pm.slot_utilisation:>7.2f}  {binding}"
            + (f" (LOW CONFIDENCE: {pm.requests:,} requests)" if low else "")
        )
    return rows


def _binds(fleet: FleetOutcome) -> str:
    return "/".join(fleet.binding)


def format_table(rep: PlanReport) -> str:
    st = rep.settings
    slo = st["slo"]
    h = rep.homogeneous
    n_rep = len(rep.replicates)
    seeds = ", ".join(str(s) for s in st["seeds"])
    lines = [
        f"budget-router plan {rep.version}: trace {rep.trace}, {rep.requests:,} requests at {st['rate']:g} req/s, "
        f"profile {st['profile']}, {n_rep} replication{'s' if n_rep > 1 else ''} (seeds {seeds})",
        f"SLO: P99 TTFT <= {slo['ttft_p99_s']:g} s, P99 TPOT <= {1000 * slo['tpot_p99_s']:g} ms, "
        f"utilisation <= {slo['util_cap']:g}; baseline {st['baseline']} ({st['homogeneous_balancer']}), "
        f"max_num_seqs {st['homogeneous_max_num_seqs']}",
        "",
        f"{'B_short':>8}{'alpha':>7}{'routed':>8}{'mu_s':>7}{'mu_l':>7}{'rho':>6}{'closed':>8}"
        f"{'GPUs':>8}{'range':>13}{'saving':>8}{'range':>17}{'$/year':>10}{'P99TTFT':>8}{'rej':>6}  binds  note",
        f"{'homog.':>8}{'':>7}{'':>8}{'':>7}{rep.mu_homogeneous:>7.2f}{'':>6}{'':>8}"
        f"{rep.homogeneous_gpus.mean:>8.0f}{_range(rep.homogeneous_gpus):>13}{'':>8}{'':>17}"
        f"{_money(rep.homogeneous_usd.mean):>10}{_s(h.fleet['ttft_p99_s']):>8}{h.fleet['rejected']:>6}  "
        f"{_binds(h)}  {'' if h.feasible else 'SLO NOT MET: ' + h.reason}",
    ]
    for i, (t, v) in enumerate(zip(rep.thresholds, rep.verdicts, strict=True)):
        d = t.dual
        saving = "-" if v.saving is None else f"{100 * v.saving.mean:.1f}%"
        if not v.qualified:
            note = "DISQUALIFIED: " + v.reason
        elif i == rep.best:
            note = "<- PICK: " + rep.pick_note
        elif i in rep.tied:
            note = "tie with the pick"
        else:
            note = ""
        ttft = _s(d.fleet["ttft_p99_s"]) if d.fleet else "-"
        gpus = f"{v.gpus.mean:.0f}" if d.pools else "-"
        lines.append(
            f"{t.b_short:>8}{t.alpha:>7.3f}{t.alpha_routed:>8.3f}{t.mu_short:>7.2f}{t.mu_long:>7.2f}{t.rho:>6.2f}"
            f"{_pct(t.closed_form_saving):>8}{gpus:>8}{_range(v.gpus):>13}{saving:>8}"
            f"{'-' if v.saving is None else _range(v.saving, 100, '{:.1f}%'):>17}"
            f"{_money(v.usd_per_year.mean):>10}{ttft:>8}{t.rejected:>6}  {_binds(d)}  {note}"
        )
    if rep.best is None:
        lines.append(f"  no pick: {rep.pick_note}")
    lines += [
        "",
        f"  {'fleet (seed ' + str(rep.replicates[0].seed) + ')':<16}{'pool':<10}{'inst':>6}{'GPUs':>7}{'reqs':>9}"
        f"{'TTFT50':>8}{'TTFT99':>8}{'TPOT50':>8}{'TPOT99':>8}{'preempt':>9}{'rej':>7}{'util':>7}{'slots':>7}  binds",
        *_pool_rows("homogeneous", h),
    ]
    for t in rep.thresholds:
        lines += _pool_rows(f"B={t.b_short}", t.dual)
    if rep.erlang:
        lines += [
            "",
            "Simulator vs Erlang C (M/M/c on each pool's batch slots, constant full-batch iteration, "
            "exponential service; beyond one iteration):",
            f"  {'pool':<12}{'slots':>6}{'load':>6}{'requests':>10}{'P(wait) sim':>13}{'Erlang C':>10}"
            f"{'excess wait sim':>17}{'Erlang C':>10}",
        ]
        for e in rep.erlang:
            lines.append(
                f"  {e.pool:<12}{e.slots:>6}{e.load:>6.2f}{e.requests:>10,}{e.sim_p_wait:>13.4f}"
                f"{e.erlang_p_wait:>10.4f}{_ms(e.sim_excess_wait_s):>14} ms"
                f"{_ms(e.erlang_excess_wait_s):>7} ms"
                + ("  (waits too rare at this load to compare)" if e.erlang_p_wait < 0.01 else "")
            )
    lines += [
        "",
        "alpha: share of requests with true total tokens <= B_short; routed: share the router sent short.",
        "mu: req/s one instance completes with a full queue; rho = mu_short / mu_homogeneous; closed = alpha(1-1/rho).",
        f"GPUs, saving, $/year: mean over the replications, range = min..max; rej: requests rejected after the "
        f"{st['warmup']:.0%} warm-up (seed {rep.replicates[0].seed}).",
        "binds: per pool, the limit that sized it (utilisation: the cap's floor already met the SLOs; TTFT/TPOT/"
        "rejections: missed one step smaller; slot wait: a pool with too few requests for a P99, sized by Erlang C).",
        "TTFT in s, TPOT in ms, preempt per 1,000 requests; util = offered load / capacity; slots = mean batch / "
        "max_num_seqs.",
    ]
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings a reader can still recognise."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else None)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(rep: PlanReport, path: Path) -> None:
    path.write_text(json.dumps(_clean(rep.as_dict()), indent=1) + "\n", encoding="utf-8")
