"""Smallest pool sizes meeting the SLOs: probe from an estimate, bracket by doubling steps, then bisect,
all pools in lock-step.

One simulation of the whole fleet answers "does each pool meet its SLO at this size?" for every pool
at once, so each pool keeps its own interval [known fail, known pass] and every trial moves all
intervals. A pool starts at an estimate (the utilisation floor, or a screening run's answer) and
steps up while it fails or down while it passes, doubling the step, until a pass and a fail bracket
it; no pool goes below its floor (the utilisation cap: a size under it fails by definition). Pools
interact only weakly (spillover, shared calibration), so the final sizes are simulated together once
more; a pool that fails there is re-opened upwards. The search assumes that more instances never hurt
a pool's latency.
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
    floor: Sequence[int] | None = None,
    max_factor: float = 16.0,
    max_trials: int = 40,
    tolerance: float = 0.005,
    first_step: float = 0.1,
    cap: int | None = None,
) -> SizingResult:
    """``check(sizes)`` simulates the fleet and says per pool whether it meets its SLOs.

    ``floor`` is each pool's lower bound (default: ``start``): sizes below it count as failing without
    being simulated. A pool's search stops once its passing size is within ``tolerance`` (relative, at
    least one instance) of a failing one: P99s from a finite run are not sharper than that. No pool
    grows past ``cap`` instances, nor past ``max_factor`` × its start: the search stops there, infeasible.
    """
    k = len(start)
    low = list(start if floor is None else floor)
    if len(low) != k or any(s < 1 for s in low):
        raise ValueError("every pool needs a floor of at least 1")
    cand = [max(int(s), lo) for s, lo in zip(start, low, strict=True)]
    fail = [lo - 1 for lo in low]
    tested_fail = [False] * k  # a fail seen in simulation, not just the floor's bound
    ok: list[int | None] = [None] * k
    step = [max(1, round(first_step * s)) for s in cand]
    down = list(step)
    result = SizingResult(tuple(cand), False)
    confirmed: tuple[int, ...] | None = None

    def close(j: int) -> bool:
        hi = ok[j]
        return hi is not None and hi - fail[j] <= max(1, int(tolerance * hi))

    while len(result.trials) < max_trials:
        sizes = tuple(cand)
        passed = tuple(bool(x) for x in check(sizes))
        result.trials.append((sizes, passed))
        for j in range(k):
            if passed[j]:
                best = ok[j]
                ok[j] = sizes[j] if best is None else min(best, sizes[j])
            else:
                if sizes[j] > fail[j]:
                    fail[j] = sizes[j]
                tested_fail[j] = True
                best = ok[j]
                if best is not None and best <= fail[j]:
                    ok[j] = None  # the pass did not hold once the other pools moved: search upwards again
        if all(close(j) for j in range(k)):
            final = tuple(int(x) for x in ok)  # type: ignore[arg-type]
            if final == sizes and all(passed):
                confirmed = final
                break
        for j in range(k):
            hi = ok[j]
            if hi is None:
                cand[j] = fail[j] + step[j]
                step[j] *= 2
                if cap is not None and cand[j] > cap:
                    result.sizes = tuple(min(c, cap) for c in cand)
                    result.reason = f"pool {j} would need more than {cap} instances (--max-instances)"
                    return result
                if cand[j] > max_factor * start[j] + 8:
                    result.sizes, result.reason = tuple(cand), f"pool {j} still misses its SLO at {cand[j]} instances"
                    return result
            elif close(j):
                cand[j] = hi
            elif not tested_fail[j]:
                cand[j] = max(fail[j] + 1, hi - down[j])  # passed from the start: probe downwards
                down[j] *= 2
            else:
                cand[j] = (fail[j] + hi) // 2
    if confirmed is None:
        result.reason = f"no confirmed size within {max_trials} simulations"
        result.sizes = tuple(cand)
        return result
    result.sizes, result.feasible = confirmed, True
    return result
