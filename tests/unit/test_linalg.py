"""The online fits' linear algebra against exact rational arithmetic."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from extproc.algorithm.linalg import decay_add_outer, solve_spd


def exact_solve(a: list[float], rhs: list[float]) -> list[Fraction]:
    """Gauss-Jordan in rationals: the true solution of the float system."""
    n = len(rhs)
    m = [[Fraction(a[i * n + j]) for j in range(n)] + [Fraction(rhs[i])] for i in range(n)]
    for c in range(n):
        p = next(r for r in range(c, n) if m[r][c] != 0)
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c and m[r][c] != 0:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_the_fit_solves_its_normal_equations(seed: int) -> None:
    rng = random.Random(seed)
    n = 17  # the v2 estimator's features
    a, b = [0.0] * (n * n), [0.0] * n
    for _ in range(40):
        x = [rng.uniform(0, 4) if rng.random() < 0.7 else 0.0 for _ in range(n)]
        decay_add_outer(a, b, x, rng.uniform(10, 2000), 0.995)
    for i in range(n):
        a[i * n + i] += 0.5  # the ridge
    w = solve_spd(a, b)
    assert w is not None
    exact = exact_solve(a, b)
    scale = max(abs(float(v)) for v in exact)
    assert max(abs(float(e) - v) for e, v in zip(exact, w, strict=True)) <= 1e-9 * scale


def test_a_matrix_that_is_not_positive_definite_has_no_solution() -> None:
    assert solve_spd([1.0, 2.0, 2.0, 1.0], [1.0, 1.0]) is None  # eigenvalues 3 and -1
    assert solve_spd([0.0], [1.0]) is None
    assert solve_spd([4.0, 2.0, 2.0, 3.0], [2.0, 1.0]) == pytest.approx([0.5, 0.0])


def test_the_update_keeps_a_symmetric_and_matches_the_full_product() -> None:
    rng = random.Random(7)
    n = 6
    a, b = [0.0] * (n * n), [0.0] * n
    for _ in range(30):
        x = [rng.uniform(-3, 3) if rng.random() < 0.6 else 0.0 for _ in range(n)]
        y = rng.uniform(0, 100)
        expected = [0.9 * a[i * n + j] + x[i] * x[j] for i in range(n) for j in range(n)]
        expected_b = [0.9 * b[i] + x[i] * y for i in range(n)]
        decay_add_outer(a, b, x, y, 0.9)
        assert a == expected and b == expected_b  # bit for bit: one triangle mirrored, zero rows decayed
