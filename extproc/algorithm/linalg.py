"""The little linear algebra the online fits need, in pure Python: the router's core install has no
numpy (the lean image), and 17 x 17 normal equations solved at learn time are cheap enough.

A solve blocks the event loop (every stream waits), so its inner products run in C: ``math.fsum``
over a ``map`` of ``operator.mul`` on row lists, ~2.5x faster than indexed generators and bit for bit
the same result (fsum is exactly rounded, so the order of its terms does not matter). The rank-1
update stays an index loop (CPython 3.11's specialised float bytecode beats ``map`` chains there)
over one triangle."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

_mul = operator.mul


def decay_add_outer(a: list[float], b: list[float], x: Sequence[float], y: float, lam: float) -> None:
    """``A ← λA + x xᵀ`` (A row-major, n x n, symmetric as every A built here) and ``b ← λb + x·y``,
    in place. One triangle is computed and mirrored, and a zero feature's row only decays: the same
    floats as the full loop (IEEE products commute), in ~70 % of its time."""
    n = len(b)
    for i in range(n):
        xi = x[i]
        row = i * n
        if xi:
            for j in range(i, n):
                v = lam * a[row + j] + xi * x[j]
                a[row + j] = v
                a[j * n + i] = v
        else:
            for j in range(i, n):
                v = lam * a[row + j]
                a[row + j] = v
                a[j * n + i] = v
        b[i] = lam * b[i] + xi * y


def solve_spd(a: Sequence[float], rhs: Sequence[float]) -> list[float] | None:
    """Solve ``A w = rhs`` for symmetric positive definite A (row-major) by Cholesky; None when A is
    not positive definite (numerically) or the result is not finite."""
    n = len(rhs)
    low: list[list[float]] = []  # rows of L, each as long as its row index + 1
    for i in range(n):
        row_a = a[i * n : i * n + i + 1]
        li: list[float] = []
        for j in range(i):
            lj = low[j]
            li.append((row_a[j] - math.fsum(map(_mul, li, lj))) / lj[j])  # li has j entries here
        s = row_a[i] - math.fsum(map(_mul, li, li))
        if not s > 0.0:
            return None
        li.append(math.sqrt(s))
        low.append(li)
    z: list[float] = []
    for i in range(n):
        li = low[i]
        z.append((rhs[i] - sum(map(_mul, li, z))) / li[i])  # z has i entries here
    w = [0.0] * n
    for i in reversed(range(n)):
        w[i] = (z[i] - sum(low[k][i] * w[k] for k in range(i + 1, n))) / low[i][i]
    return w if all(math.isfinite(v) for v in w) else None
