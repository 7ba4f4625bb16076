"""Smallest pool sizes meeting the SLOs: bracket by doubling, then bisect, all pools in lock-step.

One simulation of the whole fleet answers "does each pool meet its SLO at this size?" for every pool
at once, so each pool keeps its own interval [known fail, known pass] and every trial moves all
intervals. Pools interact only weakly (spillover, shared calibration), so the final sizes are
simulated together once more; a pool that fails there is re-opened upwards. The search assumes that
more instances never hurt a pool's latency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class SizingResult:
    sizes: tuple[int, ...]
    feasible: bool
    trials: list[tuple[tuple[int, ...], tuple[bool, ...]]] = field(default_factory=list)
    reason: str = ""


def size_pools(
    check: Callable[[tuple[int, ...]], Sequence[bool]],
    start: Sequence[int],
    *,
    max_factor: float = 16.0,
    max_trials: int = 40,
    tolerance: float = 0.005,
    cap: int | None = None,
) -> SizingResult:
    """``check(sizes)`` simulates the fleet and says per pool whether it meets its SLOs.

    ``start`` is each pool's lower bound (the utilisation cap's minimum); sizes below it are taken as
    failing without simulating them. A pool's search stops once its passing size is within
    ``tolerance`` (relative, at least one instance) of a failing one: P99s from a finite run are not
    sharper than that. No pool grows past ``cap`` instances: the search stops there, infeasible.
    """
    k = len(start)
    if any(s < 1 for s in start):
        raise ValueError("every pool needs a start size of at least 1")
    fail = [s - 1 for s in start]
    ok: list[int | None] = [None] * k
    step = [max(1, round(0.1 * s)) for s in start]
    cand = list(start)
    result = SizingResult(tuple(start), False)
    confirmed: tuple[int, ...] | None = None
    while len(result.trials) < max_trials:
        sizes = tuple(cand)
        passed = tuple(bool(x) for x in check(sizes))
        result.trials.append((sizes, passed))
        for j in range(k):
            if passed[j]:
                ok[j] = sizes[j] if ok[j] is None else min(ok[j], sizes[j])
            else:
                fail[j] = max(fail[j], sizes[j])
                if ok[j] is not None and ok[j] <= fail[j]:
                    ok[j] = None  # the pass did not hold once the other pools moved: search upwards again

        def close(j: int) -> bool:
            return ok[j] is not None and ok[j] - fail[j] <= max(1, int(tolerance * ok[j]))

        if all(close(j) for j in range(k)):
            final = tuple(int(x) for x in ok)  # type: ignore[arg-type]
            if final == sizes and all(passed):
                confirmed = final
                break
        for j in range(k):
            if ok[j] is None:
                cand[j] = fail[j] + step[j]
                step[j] *= 2
                if cap is not None and cand[j] > cap:
                    result.sizes = tuple(min(c, cap) for c in cand)
                    result.reason = f"pool {j} would need more than {cap} instances (--max-instances)"
                    return result
                if cand[j] > max_factor * start[j] + 8:
                    result.sizes, result.reason = tuple(cand), f"pool {j} still misses its SLO at {cand[j]} instances"
                    return result
            elif not close(j):
                cand[j] = (fail[j] + ok[j]) // 2
            else:
                cand[j] = ok[j]
    if confirmed is None:
        result.reason = f"no confirmed size within {max_trials} simulations"
        result.sizes = tuple(cand)
        return result
    result.sizes, result.feasible = confirmed, True
    return result
