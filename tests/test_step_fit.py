"""The step-cost fit: it recovers a known model, and the shipped A100 profile is the fit of its CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.planner.profiles import load_profile
from extproc.planner.step_fit import fit_profile, main


def test_the_fit_recovers_a_known_knee_floor_and_all_reduce(tmp_path: Path) -> None:
    w, p, t0, a, b = 0.012, 6e-5, 64, 5e-5, 2e-7
    rows = ["kind,tokens,ms"]
    rows += [f"linear,{t},{1e3 * (w + p * max(0, t - t0))}" for t in (1, 8, 32, 64, 128, 512, 2048, 8192)]
    rows += [f"allreduce,{t},{1e3 * (a + b * t)}" for t in (1, 16, 256, 4096)]
    path = tmp_path / "points.csv"
    path.write_text("# synthetic\n" + "\n".join(rows) + "\n")
    fit = fit_profile(path, layers=10)
    assert fit.knee_tokens == t0
    assert fit.floor_s == pytest.approx(w, rel=1e-6) and fit.per_token_s == pytest.approx(p, rel=1e-6)
    assert fit.allreduce_floor_s == pytest.approx(20 * a, rel=1e-6)
    assert fit.allreduce_per_token_s == pytest.approx(20 * b, rel=1e-6)
    assert fit.linear_residuals[1] < 1e-9 and fit.allreduce_residuals[1] < 1e-9


def test_too_few_points_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "few.csv"
    path.write_text("kind,tokens,ms\nlinear,1,10\nallreduce,1,0.05\n")
    with pytest.raises(ValueError, match="at least 3 'linear' and 2 'allreduce'"):
        fit_profile(path)


def test_the_shipped_a100_profile_is_the_fit_of_vidurs_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    """The YAML quotes the fit to its printed precision; a refit that moves must update the YAML."""
    fit = fit_profile()
    prof = load_profile("llama3-70b-a100").long
    assert prof.step_floor_s == pytest.approx(fit.floor_s, rel=1e-3)
    assert prof.step_per_token_s == pytest.approx(fit.per_token_s, rel=1e-3)
    assert prof.step_knee_tokens == fit.knee_tokens
    assert prof.allreduce_floor_s == pytest.approx(fit.allreduce_floor_s, rel=1e-3)
    assert prof.allreduce_per_token_s == pytest.approx(fit.allreduce_per_token_s, rel=1e-3)
    # Vidur's linear ops: 14.3 ms for one token (the weight-read floor), every point within 13 %
    profiled = {t: got for t, got, _ in fit.linear_points}
    assert round(1e3 * profiled[1], 1) == 14.3
    assert fit.linear_residuals[0] < 0.06 and fit.linear_residuals[1] < 0.13
    assert main([]) == 0 and "residuals" in capsys.readouterr().out
