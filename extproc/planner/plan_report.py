"""The plan as a terminal table and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from extproc.planner.plan import FleetOutcome, PlanReport


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{1000 * x:.0f}"


def _s(x: float) -> str:
    return "inf" if x == math.inf else ("-" if not math.isfinite(x) else f"{x:.2f}")


def _money(x: float) -> str:
    return f"${x / 1e6:.2f}M"


def _pool_rows(label: str, fleet: FleetOutcome) -> list[str]:
    rows = []
    for pm, util in zip(fleet.pools, fleet.offered_utilisation, strict=True):
        rows.append(
            f"  {label:<14}{pm.pool:<12}{pm.instances:>6}{pm.gpus:>7}{pm.requests:>9}"
            f"{_s(pm.ttft_p50_s):>8}{_s(pm.ttft_p99_s):>8}{_ms(pm.tpot_p50_s):>8}{_ms(pm.tpot_p99_s):>8}"
            f"{pm.preemptions_per_1k:>9.1f}{pm.rejected_over_context + pm.rejected_queue_full:>7}"
            f"{util:>7.2f}{pm.slot_utilisation:>7.2f}"
        )
    return rows


def format_table(rep: PlanReport) -> str:
    st = rep.settings
    slo = st["slo"]
    h = rep.homogeneous
    lines = [
        f"budget-router plan: trace {rep.trace}, {rep.requests:,} requests at {st['rate']:g} req/s, "
        f"profile {st['profile']}",
        f"SLO: P99 TTFT <= {slo['ttft_p99_s']:g} s, P99 TPOT <= {1000 * slo['tpot_p99_s']:g} ms, "
        f"utilisation <= {slo['util_cap']:g}; homogeneous balancer {st['homogeneous_balancer']}, "
        f"max_num_seqs {st['homogeneous_max_num_seqs']}",
        "",
        f"{'B_short':>8}{'alpha':>7}{'routed':>8}{'mu_s':>7}{'mu_l':>7}{'rho':>6}{'closed':>8}"
        f"{'GPUs':>7}{'saving':>8}{'$/year':>10}{'P99TTFT':>8}{'preempt':>8}  note",
        f"{'homog.':>8}{'':>7}{'':>8}{'':>7}{rep.mu_homogeneous:>7.2f}{'':>6}{'':>8}{h.gpus:>7}{'':>8}"
        f"{_money(h.usd_per_year):>10}{_s(h.fleet['ttft_p99_s']):>8}{h.fleet['preemptions_per_1k']:>8.1f}  "
        f"{'' if h.feasible else 'SLO NOT MET: ' + h.reason}",
    ]
    for i, t in enumerate(rep.thresholds):
        d = t.dual
        saving = "-" if t.saving is None else f"{100 * t.saving:.1f}%"
        if not d.feasible:
            note = "SLO NOT MET: " + d.reason
        elif t.rejected_share > st["max_reject"]:
            note = f"rejects {100 * t.rejected_share:.2f}% (under-estimated, over the short context)"
        else:
            note = "<- cheapest meeting the SLOs" if i == rep.best else ""
        lines.append(
            f"{t.b_short:>8}{t.alpha:>7.3f}{t.alpha_routed:>8.3f}{t.mu_short:>7.2f}{t.mu_long:>7.2f}{t.rho:>6.2f}"
            f"{100 * t.closed_form_saving:>7.1f}%{d.gpus:>7}{saving:>8}{_money(d.usd_per_year):>10}"
            f"{_s(d.fleet['ttft_p99_s']):>8}{d.fleet['preemptions_per_1k']:>8.1f}  {note}"
        )
    lines += [
        "",
        f"  {'fleet':<14}{'pool':<12}{'inst':>6}{'GPUs':>7}{'reqs':>9}{'TTFT50':>8}{'TTFT99':>8}{'TPOT50':>8}"
        f"{'TPOT99':>8}{'preempt':>9}{'rej':>7}{'util':>7}{'slots':>7}",
        *_pool_rows("homogeneous", h),
    ]
    for t in rep.thresholds:
        lines += _pool_rows(f"B={t.b_short}", t.dual)
    lines += [
        "",
        "alpha: share of requests with true total tokens <= B_short; routed: share the router sent short.",
        "mu: req/s one instance completes with a full queue; rho = mu_short / mu_homogeneous; closed = alpha(1-1/rho).",
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
