"""The plan as a terminal table and as JSON."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from extproc.planner.plan import PAPER, TUNED, Comparison, FleetOutcome, PlanReport, SensitivityRow, Spread

PLOTS = ("cdf.png", "saving.png", "gpus.png", "latency.png", "sensitivity.png")  # what write_plots writes
LABELS = {TUNED: "tuned (searched seqs/chunk, on-demand KV)", PAPER: "paper (worst-case KV reservation)"}


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{1000 * x:.0f}"


def _s(x: float) -> str:
    return "inf" if x == math.inf else ("-" if not math.isfinite(x) else f"{x:.2f}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def _money(x: float) -> str:
    return f"${x / 1e6:.2f}M" if math.isfinite(x) else "-"


def _range(sp: Spread, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    """min..max across replications, or '-' when there is only one."""
    if len(sp.values) < 2:
        return "-"
    return f"{fmt.format(scale * sp.lo)}..{fmt.format(scale * sp.hi)}"


def _config(fleet: FleetOutcome) -> str:
    return " / ".join(f"{c['max_num_seqs']}x{c['max_num_batched_tokens']}" for c in fleet.configs)


def _pool_rows(label: str, fleet: FleetOutcome) -> list[str]:
    rows = []
    for j, pm in enumerate(fleet.pools):
        cfg = fleet.configs[j]
        own = fleet.own_stream[j]
        note = ""
        if own is not None:
            note = (
                f"  LOW CONFIDENCE ({pm.requests:,} in the fleet run); judged on its {fleet.judged_on[j]}: "
                f"P99 TTFT {_s(own.ttft_p99_s)} s, TPOT {_ms(own.tpot_p99_s)} ms, ITL {_ms(own.itl_p99_s)} ms"
            )
        rows.append(
            f"  {label:<14}{pm.pool:<12}{cfg['max_num_seqs']:>5}{cfg['max_num_batched_tokens']:>7}{pm.instances:>6}"
            f"{pm.gpus:>7}{pm.requests:>8}{_s(pm.ttft_p50_s):>7}{_s(pm.ttft_p99_s):>7}{_ms(pm.tpot_p50_s):>7}"
            f"{_ms(pm.tpot_p99_s):>7}{_ms(pm.itl_p50_s):>6}{_ms(pm.itl_p99_s):>7}{pm.preemptions_per_1k:>8.1f}"
            f"{pm.rejected:>6}{fleet.offered_utilisation[j]:>6.2f}{pm.slot_utilisation:>6.2f}  {fleet.binding[j]}{note}"
        )
    return rows


def _comparison_rows(rep: PlanReport, comp: Comparison) -> list[str]:
    prov = comp.provisioning
    r0 = rep.replicates[0]
    h = r0.homogeneous[prov]
    hf = h.fleet
    lines = [
        f"{LABELS[prov]}:",
        f"  {'B_short':>8}{'alpha':>7}{'routed':>8}{'GPUs':>8}{'range':>12}{'saving':>8}{'range':>15}{'closed':>8}"
        f"{'$/year':>9}{'$/Mtok':>8}{'TTFT99':>7}{'TPOT99':>7}{'ITL99':>6}{'rej':>5}  config  binds  note",
        f"  {'homog.':>8}{'':>7}{'':>8}{comp.homogeneous_gpus.mean:>8.0f}{_range(comp.homogeneous_gpus):>12}{'':>8}"
        f"{'':>15}{'':>8}{_money(comp.homogeneous_usd.mean):>9}{h.usd_per_million_tokens:>8.3f}"
        f"{_s(hf['ttft_p99_s']):>7}{_ms(hf['tpot_p99_s']):>7}{_ms(hf['itl_p99_s']):>6}{hf['rejected']:>5}  "
        f"{_config(h)}  {'/'.join(h.binding)}  {'' if h.feasible else 'SLO NOT MET: ' + h.reason}",
    ]
    for i, (t, v) in enumerate(zip(r0.thresholds[prov], comp.verdicts, strict=True)):
        d = t.dual
        saving = "-" if v.saving is None else f"{100 * v.saving.mean:.1f}%"
        if not v.qualified:
            note = "DISQUALIFIED: " + v.reason
        elif i == comp.best:
            note = "<- PICK: " + comp.pick_note
        elif i in comp.tied:
            note = "tie with the pick"
        else:
            note = ""
        f = d.fleet
        sized = bool(d.pools)
        lines.append(
            f"  {t.b_short:>8}{t.alpha:>7.3f}{t.alpha_routed:>8.3f}{(f'{v.gpus.mean:.0f}' if sized else '-'):>8}"
            f"{_range(v.gpus):>12}{saving:>8}{'-' if v.saving is None else _range(v.saving, 100, '{:.1f}%'):>15}"
            f"{_pct(t.closed_form_saving):>8}{_money(v.usd_per_year.mean) if sized else '-':>9}"
            f"{d.usd_per_million_tokens:>8.3f}{_s(f.get('ttft_p99_s', math.nan)):>7}"
            f"{_ms(f.get('tpot_p99_s', math.nan)):>7}{_ms(f.get('itl_p99_s', math.nan)):>6}{t.rejected:>5}  "
            f"{_config(d) if sized else '-'}  {'/'.join(d.binding)}  {note}"
        )
    if comp.best is None:
        lines.append(f"  no pick: {comp.pick_note}")
    return lines


def _equal_rows(rep: PlanReport) -> list[str]:
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for r in rep.replicates:
        for e in r.equal_gpu:
            groups[(e.provisioning, e.b_short)].append(e)
    if not groups:
        return []
    lines = [
        "",
        "Equal GPUs (the dual fleet given the homogeneous fleet's GPUs, split as it was sized; fleet-wide, mean "
        f"over {len(rep.replicates)} seed(s), min..max):",
        f"  {'':<10}{'B_short':>8}{'GPUs':>7}  {'side':<7}{'P99 TTFT s':>18}{'P99 TPOT ms':>18}{'P99 ITL ms':>18}"
        f"{'preempt/1k':>18}{'rejected':>14}",
    ]

    def cell(es: list[Any], side: str, key: str, scale: float, fmt: str) -> str:
        vals = [scale * getattr(e, side)[key] for e in es]
        mean = float(np.mean(vals))
        rng = f" ({fmt.format(min(vals))}..{fmt.format(max(vals))})" if len(vals) > 1 else ""
        return (fmt.format(mean) + rng) if math.isfinite(mean) else "-"

    for (prov, b), es in sorted(groups.items()):
        for side in ("homogeneous", "dual"):
            lines.append(
                f"  {prov if side == 'homogeneous' else '':<10}{b if side == 'homogeneous' else '':>8}"
                f"{round(float(np.mean([e.gpus for e in es]))) if side == 'homogeneous' else '':>7}  {side[:5]:<7}"
                f"{cell(es, side, 'ttft_p99_s', 1, '{:.2f}'):>18}{cell(es, side, 'tpot_p99_s', 1000, '{:.0f}'):>18}"
                f"{cell(es, side, 'itl_p99_s', 1000, '{:.0f}'):>18}"
                f"{cell(es, side, 'preemptions_per_1k', 1, '{:.1f}'):>18}"
                f"{cell(es, side, 'rejected', 1, '{:.0f}'):>14}"
            )
    return lines


def sensitivity_summary(rows: list[SensitivityRow]) -> list[tuple[str, float, float, str]]:
    """Per knob: the lowest and highest saving it produces (the plan's own row included) and the value
    that gives the lowest, ordered by how far the knob moves the answer."""
    if not rows:
        return []
    base = rows[0].saving
    out = []
    knobs: dict[str, list[SensitivityRow]] = defaultdict(list)
    for r in rows[1:]:
        knobs[r.knob].append(r)
    for knob, rs in knobs.items():
        vals = [(r.saving, r.value) for r in rs if math.isfinite(r.saving)]
        if math.isfinite(base):
            vals.append((base, "the plan's"))
        if not vals:
            out.append((knob, math.nan, math.nan, "infeasible at every value"))
            continue
        lo, hi = min(vals), max(vals)
        out.append((knob, lo[0], hi[0], lo[1]))
    return sorted(out, key=lambda x: -(x[2] - x[1]) if math.isfinite(x[2] - x[1]) else 0.0)


def _sensitivity_rows(rep: PlanReport) -> list[str]:
    if not rep.sensitivity:
        return []
    base = rep.sensitivity[0]
    head = (
        f"Sensitivity at B_short={rep.sensitivity_b_short} (screening estimates, seed {rep.replicates[0].seed}: "
        "scaled fleets; every other setting at the plan's choice):"
    )
    if not any(math.isfinite(r.saving) for r in rep.sensitivity):
        return [
            "",
            head,
            f"  no saving to compare: every one of the {len(rep.sensitivity)} screened variants leaves a "
            "side short of the SLOs (plan.json lists them)",
        ]
    lines = [
        "",
        head,
        f"  {'knob':<38}{'value':<40}{'homog GPUs':>11}{'dual GPUs':>10}{'saving':>8}{'change':>8}",
    ]
    for r in rep.sensitivity:
        delta = r.saving - base.saving if r is not base else 0.0
        lines.append(
            f"  {r.knob:<38}{r.value[:39]:<40}{r.homogeneous_gpus:>11.0f}{r.dual_gpus:>10.0f}{_pct(r.saving):>8}"
            f"{_pct(delta) if r is not base else '':>8}"
        )
    lines += ["", "  What moves the answer (saving range over each knob's values, the plan's value included):"]
    for knob, lo, hi, worst in sensitivity_summary(rep.sensitivity):
        if not math.isfinite(lo):
            lines.append(f"    {knob:<38} {worst}")
            continue
        lines.append(f"    {knob:<38} {_pct(lo):>7} .. {_pct(hi):<7} (lowest at {worst})")
    return lines


def format_table(rep: PlanReport) -> str:
    st = rep.settings
    n_rep = len(rep.replicates)
    seeds = ", ".join(str(s) for s in st["seeds"])
    lines = [
        f"budget-router plan {rep.version}: trace {rep.trace}, {rep.requests:,} requests at {st['rate']:g} req/s, "
        f"profile {st['profile']}, {n_rep} replication{'s' if n_rep > 1 else ''} (seeds {seeds})",
        f"step costs: {st['fitted_to']}",
        f"SLO (every pool and the fleet): {st['slo_text']}; balancer {st['balancer']} (homogeneous "
        f"{st['homogeneous_balancer']}: {st['baseline']})",
        "",
    ]
    for prov in rep.comparisons:
        lines += [*_comparison_rows(rep, rep.comparisons[prov]), ""]
    r0 = rep.replicates[0]
    lines.append(
        f"  {'fleet (seed ' + str(r0.seed) + ')':<14}{'pool':<12}{'seqs':>5}{'chunk':>7}{'inst':>6}{'GPUs':>7}"
        f"{'reqs':>8}{'TTFT50':>7}{'TTFT99':>7}{'TPOT50':>7}{'TPOT99':>7}{'ITL50':>6}{'ITL99':>7}{'preempt':>8}"
        f"{'rej':>6}{'util':>6}{'slots':>6}  binds"
    )
    for prov in rep.comparisons:
        lines += _pool_rows(f"{prov} homog.", r0.homogeneous[prov])
        for t in r0.thresholds[prov]:
            if t.dual.pools:
                lines += _pool_rows(f"{prov} B={t.b_short}", t.dual)
    lines += _equal_rows(rep)
    lines += _sensitivity_rows(rep)
    if rep.erlang:
        lines += [
            "",
            "Simulator vs Erlang C (M/M/c on each pool's batch slots, constant full-batch step, exponential "
            "service; beyond one step):",
            f"  {'pool':<20}{'slots':>6}{'load':>6}{'requests':>10}{'P(wait) sim':>13}{'Erlang C':>10}"
            f"{'excess wait sim':>17}{'Erlang C':>10}",
        ]
        for e in rep.erlang:
            lines.append(
                f"  {e.pool:<20}{e.slots:>6}{e.load:>6.2f}{e.requests:>10,}{e.sim_p_wait:>13.4f}"
                f"{e.erlang_p_wait:>10.4f}{_ms(e.sim_excess_wait_s):>14} ms{_ms(e.erlang_excess_wait_s):>7} ms"
                + ("" if e.comparable else "  (not comparable: waits too rare or within a few steps)")
            )
    lines += [
        "",
        "alpha: share of requests with true total tokens <= B_short; routed: share the router sent short.",
        "closed = alpha(1-1/rho), rho = mu_short / mu_homogeneous (req/s one instance completes with a full queue).",
        f"GPUs, saving, $/year: mean over the replications, range = min..max; $/Mtok: fleet $ per million tokens "
        f"(prompt + output) served; TTFT99 (s), TPOT99, ITL99 (ms), rej: fleet-wide, after the {st['warmup']:.0%} "
        f"warm-up (seed {r0.seed}).",
        "config: max_num_seqs x max_num_batched_tokens per pool. binds: per pool, the limit that sized it "
        "(utilisation: the cap's floor already met the SLOs; TTFT/TPOT/ITL/rejections: missed one step smaller).",
        "TPOT: a request's mean time per output token; ITL: every gap between two tokens (vLLM's inter-token "
        "latency). preempt per 1,000 requests; util = offered load / capacity; slots = mean batch / max_num_seqs.",
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
