"""The replay's report: which pool served what and how fast, how good the router's estimates were, how
its learned bytes/token converged to the truth, and every way a request went wrong.

Sources, each authoritative for one thing: the client's outcomes (status, latency), Envoy's access log
(the pool that actually served a request, even when the router was not asked), the router's decision
lines (its category, estimate, error and spill flag) and its saved calibration over time.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extproc.stack.replay import Outcome, emulator_template_tokens
from extproc.stack.router_view import RatioPoint

POOLS = ("short", "long")
CONVERGED_AFTER = 50  # the "after N samples" column of the convergence table


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _point(p: RatioPoint | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"t_s": round(p.t_s, 2), "samples": p.samples, "mean": p.mean, "ratio": p.ratio}


def pool_stats(outcomes: Sequence[Outcome], pools: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    by_pool: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_pool[pools.get(o.request.request_id, "unknown")].append(o)
    out: dict[str, dict[str, Any]] = {}
    for pool in (*POOLS, *sorted(set(by_pool) - set(POOLS))):
        group = by_pool.get(pool, [])
        if not group and pool not in POOLS:
            continue
        ok = [o.latency_s for o in group if not o.error and o.latency_s is not None]
        ttfb = [o.first_byte_s for o in group if not o.error and o.first_byte_s is not None]
        bad = Counter(str(o.status) for o in group if o.status and not 200 <= o.status < 300)
        out[pool] = {
            "requests": len(group),
            "ok": len(ok),
            "non_2xx": dict(sorted(bad.items())),
            "context_overflow": sum(o.error == "context_overflow" for o in group),
            "latency_p50_s": _pct(ok, 50),
            "latency_p99_s": _pct(ok, 99),
            "first_byte_p50_s": _pct(ttfb, 50),
        }
    return out


def actual_prompt_tokens(o: Outcome, decision: Mapping[str, Any]) -> tuple[int, str]:
    """The true ``usage.prompt_tokens`` of a request and where it came from: the response the client
    read, else the usage the router read (a sampled stream), else the exact count the prompt was cut
    to plus the emulator's template (streams the router did not sample)."""
    if o.usage.get("prompt_tokens"):
        return o.usage["prompt_tokens"], "client"
    if decision.get("prompt_tokens"):
        return int(decision["prompt_tokens"]), "router"
    return o.request.expected_usage, "constructed"


def estimate_errors(outcomes: Sequence[Outcome], decisions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Signed error of the router's prompt estimate at routing time vs the truth, per router category,
    for every request the router routed (not only the ones it learned from). Negative means the router
    thought the prompt smaller than it was (the dangerous side)."""
    per: dict[str, list[float]] = defaultdict(list)
    sources: Counter[str] = Counter()
    mismatches = 0
    for o in outcomes:
        d = decisions.get(o.request.request_id)
        if not d or not d.get("estimated_prompt_tokens") or not d.get("category"):
            continue
        actual, source = actual_prompt_tokens(o, d)
        sources[source] += 1
        mismatches += source != "constructed" and actual != o.request.expected_usage
        per[str(d["category"])].append((int(d["estimated_prompt_tokens"]) - actual) / actual * 100.0)
    out: dict[str, Any] = {}
    for category, errs in sorted(per.items()):
        absolute = [abs(e) for e in errs]
        out[category] = {
            "n": len(errs),
            "p50": _pct(errs, 50),
            "abs_p50": _pct(absolute, 50),
            "abs_p90": _pct(absolute, 90),
            "abs_p99": _pct(absolute, 99),
            "underestimates": sum(e < 0 for e in errs),
            "worst_under": min(errs),
        }
    return {"by_category": out, "truth_from": dict(sources), "usage_differs_from_construction": mismatches}


EXACT_USAGE = ("json", "sse")  # the router read a served answer's usage (not a 400's bound)


def true_ratios(outcomes: Sequence[Outcome], decisions: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Bytes per content token of what was sent, grouped by the category the *router* put it in. The
    tokens are the pools' own count (``usage.prompt_tokens`` less the one-message template) wherever a
    served answer's usage was read, else the count the prompt was cut to: the same for the emulator,
    whose BPE cut them, and the truth for a real engine whose vocabulary is another (Llama-3's, not
    cl100k). A 400's "at least N" is a floor, not a count, and is never taken for one."""
    nbytes: Counter[str] = Counter()
    ntokens: Counter[str] = Counter()
    template = emulator_template_tokens()
    for o in outcomes:
        d = decisions.get(o.request.request_id)
        category = str(d["category"]) if d and d.get("category") else o.request.category
        actual, source = actual_prompt_tokens(o, d or {})
        exact = source == "client" or (d or {}).get("usage_source") in EXACT_USAGE
        nbytes[category] += o.request.text_bytes
        measured = exact and actual > template
        ntokens[category] += actual - template if measured else o.request.prompt_tokens
    return {k: nbytes[k] / ntokens[k] for k in sorted(nbytes) if ntokens[k]}


def convergence(points: Sequence[RatioPoint], truth: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for category in sorted({p.category for p in points if p.samples > 0}):
        series = [p for p in points if p.category == category and p.samples > 0]
        after = next((p for p in series if p.samples >= CONVERGED_AFTER), None)
        final = series[-1]
        true = truth.get(category)
        out[category] = {
            "true": true,
            "first": _point(series[0]),
            f"after_{CONVERGED_AFTER}": _point(after),
            "final": _point(final),
            "final_mean_error_pct": (final.mean - true) / true * 100 if true else None,
            "final_ratio_error_pct": (final.ratio - true) / true * 100 if true else None,
        }
    return out


def build_report(
    run: Mapping[str, Any],
    outcomes: Sequence[Outcome],
    pools: Mapping[str, str],
    decisions: Mapping[str, Mapping[str, Any]],
    points: Sequence[RatioPoint],
) -> dict[str, Any]:
    truth = true_ratios(outcomes, decisions)
    mine = {o.request.request_id for o in outcomes}
    seen = {k: v for k, v in decisions.items() if k in mine}
    errors = Counter(o.error.split(":")[0] for o in outcomes if o.error and not o.error.startswith("http_"))
    return {
        "run": {
            **run,
            "completed": sum(o.status != 0 for o in outcomes),
            "client_queued": sum(o.client_queued_s > 0.05 for o in outcomes),
        },
        "pools": pool_stats(outcomes, pools),
        "routing": {
            "router_decisions": len(seen),
            "without_router": len(mine) - len(seen),  # fail-open or never reached the router
            "reasons": dict(Counter(str(d.get("reason")) for d in seen.values()).most_common()),
            "spilled": sum(bool(d.get("spilled")) for d in seen.values()),
            "output_defaulted": sum(bool(d.get("output_defaulted")) for d in seen.values()),
        },
        "client_errors": dict(errors),
        "estimate_error_pct": estimate_errors(outcomes, seen),
        "ratios": convergence(points, truth),
    }


def _f(value: Any, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render(report: Mapping[str, Any]) -> str:
    r = report["run"]
    queued = f", {r['client_queued']} waited for the client's cap" if r["client_queued"] else ""
    lines = [
        f"Replay {r['trace']}: {r['sent']} requests in {r['wall_s']:.1f}s "
        f"({r['sent'] / max(r['replay_s'], 1e-9):.1f} req/s offered, {r['stream_share']:.0%} streaming), "
        f"{r['completed']} answered{queued}",
        f"Workload: {r['need_long']} of {r['planned']} requests need more than the short pool's "
        f"{r['short_context']} tokens (prompt + max_tokens)",
        "",
        f"{'pool':<8}{'requests':>9}{'ok':>7}{'overflow':>9}{'non-2xx':>9}{'p50 s':>8}{'p99 s':>8}{'TTFB p50':>10}",
    ]
    for pool, s in report["pools"].items():
        non2xx = sum(s["non_2xx"].values())
        lines.append(
            f"{pool:<8}{s['requests']:>9}{s['ok']:>7}{s['context_overflow']:>9}{non2xx:>9}"
            f"{_f(s['latency_p50_s']):>8}{_f(s['latency_p99_s']):>8}{_f(s['first_byte_p50_s']):>10}"
        )
        if s["non_2xx"]:
            lines.append(f"{'':<8}statuses: " + ", ".join(f"{k}x{v}" for k, v in s["non_2xx"].items()))
    rt = report["routing"]
    lines += [
        "",
        f"Router: {rt['router_decisions']} decisions ({', '.join(f'{k} {v}' for k, v in rt['reasons'].items())}); "
        f"spilled {rt['spilled']}; without router {rt['without_router']}; no max_tokens {rt['output_defaulted']}",
    ]
    if report["client_errors"]:
        lines.append("Client errors: " + ", ".join(f"{k} {v}" for k, v in report["client_errors"].items()))
    lines += ["", "Estimate error of prompt tokens at routing time (% of actual; negative = under)"]
    lines.append(f"{'category':<12}{'n':>6}{'p50':>8}{'|p50|':>8}{'|p90|':>8}{'|p99|':>8}{'under':>7}{'worst':>8}")
    for category, e in report["estimate_error_pct"]["by_category"].items():
        lines.append(
            f"{category:<12}{e['n']:>6}{_f(e['p50'], '+.1f'):>8}{_f(e['abs_p50'], '.1f'):>8}"
            f"{_f(e['abs_p90'], '.1f'):>8}{_f(e['abs_p99'], '.1f'):>8}{e['underestimates']:>7}"
            f"{_f(e['worst_under'], '+.1f'):>8}"
        )
    after = f"after_{CONVERGED_AFTER}"
    lines += ["", "Learned bytes/token c* (mean) vs the pools' true bytes/token"]
    lines.append(
        f"{'category':<12}{'true':>7}{'first':>16}{f'after {CONVERGED_AFTER}':>16}{'final':>16}"
        f"{'samples':>9}{'mean err':>10}"
    )

    def cell(p: Mapping[str, Any] | None) -> str:
        return "-" if p is None else f"{p['ratio']:.2f} ({p['mean']:.2f})"

    for category, c in report["ratios"].items():
        lines.append(
            f"{category:<12}{_f(c['true']):>7}{cell(c['first']):>16}{cell(c[after]):>16}{cell(c['final']):>16}"
            f"{c['final']['samples']:>9}{_f(c['final_mean_error_pct'], '+.1f', '%'):>10}"
        )
    short = report["pools"].get("short", {})
    verdict = "none" if not short.get("context_overflow") else f"{short['context_overflow']} (goal: 0)"
    lines += ["", f"Context-overflow errors in the short pool: {verdict}"]
    return "\n".join(lines)


def save_png(points: Sequence[RatioPoint], truth: Mapping[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    categories = sorted({p.category for p in points if p.samples > 0})
    end = max((p.t_s for p in points), default=0.0)
    for i, category in enumerate(categories):
        color = f"C{i}"
        series = [p for p in points if p.category == category and p.samples > 0]
        series.append(dataclasses.replace(series[-1], t_s=end))  # hold the last value to the end
        t = [p.t_s for p in series]
        ax.step(t, [p.ratio for p in series], where="post", color=color, label=f"{category} c*")
        ax.step(t, [p.mean for p in series], where="post", color=color, linestyle=":", alpha=0.7)
        if category in truth:
            ax.axhline(truth[category], color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("seconds into the replay")
    ax.set_ylabel("bytes per token")
    ax.set_title("Learned bytes/token: c* (solid), mean (dotted), emulator truth (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
