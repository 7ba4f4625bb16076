"""The little linear algebra the online fits need, in pure Python: the router's core install has no
numpy (the lean image), and 17 x 17 normal equations solved at learn time are cheap enough."""

from __future__ import annotations

import math
from collections.abc import Sequence


def decay_add_outer(a: list[float], b: list[float], x: Sequence[float], y: float, lam: float) -> None:
    """``A ← λA + x xᵀ`` (A row-major, n x n) and ``b ← λb + x·y``, in place."""
    n = len(b)
    for i in range(n):
        xi = x[i]
        row = i * n
        for j in range(n):
            a[row + j] = lam * a[row + j] + xi * x[j]
        b[i] = lam * b[i] + xi * y


def solve_spd(a: Sequence[float], rhs: Sequence[float]) -> list[float] | None:
    """Solve ``A w = rhs`` for symmetric positive definite A (row-major) by Cholesky; None when A is
    not positive definite (numerically) or the result is not finite."""
    n = len(rhs)
    low = [0.0] * (n * n)
    for i in range(n):
        for j in range(i + 1):
            s = a[i * n + j] - math.fsum(low[i * n + k] * low[j * n + k] for k in range(j))
            if i == j:
                if not s > 0.0:
                    return None
                low[i * n + i] = math.sqrt(s)
            else:
                low[i * n + j] = s / low[j * n + j]
    z = [0.0] * n
    for i in range(n):
        z[i] = (rhs[i] - sum(low[i * n + k] * z[k] for k in range(i))) / low[i * n + i]
    w = [0.0] * n
    for i in reversed(range(n)):
        w[i] = (z[i] - sum(low[k * n + i] * w[k] for k in range(i + 1, n))) / low[i * n + i]
    return w if all(math.isfinite(v) for v in w) else None
