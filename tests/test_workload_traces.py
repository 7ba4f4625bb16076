"""Trace sources, timing and the workload spec: shipped Azure files, malformed input, CDF sampling,
the synthetic heavy tail, Poisson re-timing and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.workload.azure_csv import load_azure_csv, parse_timestamp
from extproc.workload.cdf import CdfTable, load_cdf, split_totals, validate_pairs
from extproc.workload.jsonl import load_jsonl
from extproc.workload.mix import CategoryMix, assign_categories
from extproc.workload.spec import AZURE_FILES, WorkloadSpec, build_workload, load_builtin_azure
from extproc.workload.synthetic import HeavyTailParams, sample_totals
from extproc.workload.timing import bound, cycle, poisson, replay
from extproc.workload.trace import Trace, TraceRequest


def _means(trace: Trace) -> tuple[float, float]:
    n = len(trace)
    return (sum(r.prompt_tokens for r in trace.requests) / n, sum(r.output_tokens for r in trace.requests) / n)


# paper.md §7.1: rows, mean in / out, F(total <= 2048), max total
@pytest.mark.parametrize(
    ("name", "rows", "mean_in", "mean_out", "f2k", "max_total"),
    [
        ("azure-code", 8819, 2047.8, 27.9, 0.618, 7841),
        ("azure-conv", 19366, 1154.7, 211.1, 0.853, 14089),
        ("azure-both", 28185, 1434.2, 153.8, 0.780, 14089),
    ],
)
def test_shipped_azure_traces_match_the_published_statistics(name, rows, mean_in, mean_out, f2k, max_total):
    trace = load_builtin_azure(name)
    assert len(trace) == rows and trace.timed
    got_in, got_out = _means(trace)
    assert got_in == pytest.approx(mean_in, abs=0.05) and got_out == pytest.approx(mean_out, abs=0.05)
    totals = np.array([r.total_tokens for r in trace.requests])
    assert (totals <= 2048).mean() == pytest.approx(f2k, abs=0.0005)
    assert totals.max() == max_total
    arrivals = np.array([r.arrival_s for r in trace.requests])
    assert arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    assert 3400 < arrivals[-1] < 3600  # one hour of traffic, 2023-11-16 18:15-19:14


def test_azure_code_rows_are_code_and_both_keeps_each_files_rows():
    both = load_builtin_azure("azure-both")
    categories = [r.category for r in both.requests]
    assert categories.count("code") == 8819 and categories.count(None) == 19366
    assert {r.category for r in load_builtin_azure("azure-code", code_category=None).requests} == {None}


def test_azure_first_rows_and_seven_digit_timestamps():
    code = load_azure_csv(AZURE_FILES["code"])
    first, second = code.requests[:2]
    assert (first.prompt_tokens, first.output_tokens, second.prompt_tokens) == (4808, 10, 3180)
    assert second.arrival_s == pytest.approx(0.052, abs=1e-9)  # 04.0319600 - 03.9799600
    assert parse_timestamp("2023-11-16 18:17:03.9799600") % 10_000_000 == 9_799_600
    assert parse_timestamp("2024-05-10 02:00:00.5+02:00") == parse_timestamp("2024-05-10 00:00:00.500000")


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("time,in,out\n", 1, "expected header"),
        ("", 1, "expected header"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,10,2\n2023-11-16 18:17:04,5\n", 3, "3 comma"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,10,2\n2023-13-16 18:17:04,5,1\n", 3, ""),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:77:04,5,1\n", 2, "bad timestamp"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,five,1\n", 2, "invalid literal"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,0,1\n", 2, "ContextTokens must be >= 1"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,4,-1\n", 2, "GeneratedTokens must be >= 0"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n\n", None, "no data rows"),
    ],
)
def test_malformed_azure_csv_names_file_and_line(tmp_path: Path, content, line, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_azure_csv(path)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert str(err.value).startswith(where) and fragment in str(err.value)


def test_non_utf8_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt_tokens": 1, "output_tokens": 1, "category": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        load_jsonl(path)


def test_jsonl_timed_and_untimed(tmp_path: Path):
    timed = tmp_path / "t.jsonl"
    timed.write_text(
        '# a comment\n{"arrival_s": 2.5, "prompt_tokens": 10, "output_tokens": 3, "category": "cjk"}\n'
        '\n{"arrival_s": 1, "prompt_tokens": 7, "output_tokens": 0}\n'
    )
    trace = load_jsonl(timed)
    assert trace.timed and [r.arrival_s for r in trace.requests] == [1.0, 2.5]
    assert trace.requests[1] == TraceRequest(2.5, 10, 3, "cjk")
    untimed = tmp_path / "u.jsonl"
    untimed.write_text('{"prompt_tokens": 10, "output_tokens": 3}\n')
    trace = load_jsonl(untimed)
    assert not trace.timed and trace.requests[0].arrival_s == 0.0
    with pytest.raises(ValueError, match="no timestamps"):
        replay(trace)


@pytest.mark.parametrize(
    ("line2", "fragment"),
    [
        ('{"prompt_tokens": 5}', 'missing "output_tokens"'),
        ('{"prompt_tokens": 5.5, "output_tokens": 1}', "must be an integer"),
        ('{"prompt_tokens": 0, "output_tokens": 1}', ">= 1"),
        ('{"prompt_tokens": 5, "output_tokens": 1, "extra": 1}', "unknown keys"),
        ('{"prompt_tokens": 5, "output_tokens": 1', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"arrival_s": 3, "prompt_tokens": 5, "output_tokens": 1}', "every line or on none"),
        ('{"arrival_s": -1, "prompt_tokens": 5, "output_tokens": 1}', "finite number >= 0"),
        ('{"prompt_tokens": 5, "output_tokens": 1, "category": 7}', "non-empty string"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, line2, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt_tokens": 5, "output_tokens": 1}\n' + line2 + "\n")
    with pytest.raises(ValueError, match=f"^{path}:2: ") as err:
        load_jsonl(path)
    assert fragment in str(err.value)


def test_cdf_file_formats_and_interpolated_sampling(tmp_path: Path):
    pairs = [[1000, 0.5], [2000, 1.0]]
    for name, payload in (("list.json", pairs), ("obj.json", {"cdf": pairs, "source": "x"})):
        path = tmp_path / name
        path.write_text(json.dumps(payload))
        table = load_cdf(path)
        assert table.fraction_at_most(1000) == 0.5 and table.max_tokens == 2000
    totals = table.sample_totals(40_000, np.random.default_rng(3))
    assert totals.min() >= 2 and totals.max() <= 2000
    assert (totals <= 1000).mean() == pytest.approx(0.5, abs=0.01)
    assert (totals <= 500).mean() == pytest.approx(0.25, abs=0.01)  # uniform within the first bin


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[[64, 0.2],\n [32, 0.5],\n [128, 1.0]]", 2, "strictly increasing"),
        ("[[64, 0.2],\n [128, 0.1],\n [256, 1.0]]", 2, "non-decreasing"),
        ("[[64, 0.2],\n [128, 0.9]]", 2, "must end at 1.0"),
        ('{"cdf": [[64, 0.2],\n [128, 1.5]]}', 2, "[0, 1]"),
        ("[[64, 0.2],\n [128, 1.0]", 2, "invalid JSON"),
        ('{"points": []}', 1, '"cdf" key'),
    ],
)
def test_malformed_cdf_names_file_and_line(tmp_path: Path, text, line, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path}:{line}: ") as err:
        load_cdf(path)
    assert fragment in str(err.value)


@st.composite
def cdf_pairs(draw) -> list[list[float]]:
    n = draw(st.integers(1, 12))
    steps = draw(st.lists(st.integers(1, 20_000), min_size=n, max_size=n))
    tokens = np.cumsum(steps).tolist()
    raw = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=n - 1, max_size=n - 1)))
    return [[float(t), f] for t, f in zip(tokens, [*raw, 1.0], strict=True)]


@settings(max_examples=200, deadline=None)
@given(pairs=cdf_pairs(), us=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40))
def test_cdf_inverse_is_monotone_and_within_bounds(pairs, us):
    assert validate_pairs(pairs) == []
    table = CdfTable.from_pairs(pairs)
    u = np.sort(np.array(us))
    totals = table.inverse(u)
    assert np.all(np.diff(totals) >= 0)
    assert totals.min() >= 2 and totals.max() <= max(2, int(np.ceil(pairs[-1][0])))
    # u falls in the bin between the last breakpoint with F <= u and the first with F > u
    for ui, ti in zip(u, totals, strict=True):
        upper = next((t for t, f in pairs if f > ui), pairs[-1][0])
        lower = max((t for t, f in pairs if f <= ui), default=0.0)
        assert lower <= ti <= max(2, int(np.ceil(upper)))


@settings(max_examples=100, deadline=None)
@given(
    totals=st.lists(st.integers(0, 70_000), min_size=1, max_size=50),
    frac=st.floats(0.05, 0.95),
    cap=st.one_of(st.none(), st.integers(1, 4096)),
)
def test_split_totals_keeps_sum_and_one_token_each(totals, frac, cap):
    prompts, outputs = split_totals(np.array(totals), frac, cap)
    assert np.all(prompts + outputs == np.maximum(totals, 2))
    assert prompts.min() >= 1 and outputs.min() >= 1
    if cap is not None:
        assert outputs.max() <= cap


def test_synthetic_heavy_tail_matches_the_papers_shape():
    totals = sample_totals(100_000, np.random.default_rng(7))
    assert (totals <= 2048).mean() == pytest.approx(0.80, abs=0.005)
    assert (totals <= 8192).mean() == pytest.approx(0.92, abs=0.005)
    assert totals.max() <= 65536 and (totals > 32768).mean() > 0.01  # the tail reaches the long pool
    assert totals.min() >= HeavyTailParams().body_min
    with pytest.raises(ValueError):
        HeavyTailParams(body_fraction=0.95)


def test_poisson_retiming_rate_and_replay_speedup():
    requests = [TraceRequest(float(i), 10, 1) for i in range(20_000)]
    timed = poisson(requests, 250.0, np.random.default_rng(11))
    gaps = np.diff([0.0] + [r.arrival_s for r in timed])
    assert len(timed) / timed[-1].arrival_s == pytest.approx(250.0, rel=0.02)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.03)  # exponential gaps
    fast = replay(Trace("t", tuple(requests), timed=True), speedup=4.0)
    assert fast[8].arrival_s == 2.0
    with pytest.raises(ValueError, match="rate"):
        poisson(requests, 0.0, np.random.default_rng(0))


def test_bound_and_cycle():
    requests = [TraceRequest(i * 0.5, i + 1, 1) for i in range(10)]
    assert len(bound(requests, count=3)) == 3
    assert [r.arrival_s for r in bound(requests, duration_s=2.0)] == [0.0, 0.5, 1.0, 1.5]
    repeated = cycle(requests, 25, np.random.default_rng(0))
    assert len(repeated) == 25 and repeated[:10] == requests
    assert sorted(r.prompt_tokens for r in repeated[10:20]) == list(range(1, 11))


def test_workload_spec_is_deterministic_and_bounded():
    spec = WorkloadSpec("azure-conv", rate=20.0, duration_s=60.0, seed=5)
    first, again = build_workload(spec), build_workload(spec)
    assert first == again and 1000 < len(first) < 1400
    assert first[-1].arrival_s < 60.0 and all(r.category for r in first)
    assert build_workload(WorkloadSpec("azure-conv", rate=20.0, duration_s=60.0, seed=6)) != first
    big = build_workload(WorkloadSpec("azure-code", rate=1000.0, count=20_000, seed=1))
    assert len(big) == 20_000 and {r.category for r in big} == {"code"}
    replayed = build_workload(WorkloadSpec("azure-both", speedup=60.0, duration_s=30.0))
    assert 12_000 < len(replayed) < 16_000  # half of the hour


def test_workload_spec_errors():
    with pytest.raises(ValueError, match="unknown trace"):
        build_workload(WorkloadSpec("azure-nope", rate=1.0))
    with pytest.raises(ValueError, match="no timestamps"):
        build_workload(WorkloadSpec("synthetic-heavy-tail", count=10))
    with pytest.raises(FileNotFoundError):
        build_workload(WorkloadSpec("/nonexistent/trace.csv", rate=1.0))
    with pytest.raises(ValueError, match="code_category"):
        WorkloadSpec("azure-code", code_category="klingon")


def test_category_mix_parse_assign_and_errors():
    mix = CategoryMix.parse("prose=3, cjk=1")
    assert mix.weights == {"prose": 0.75, "cjk": 0.25}
    requests = [TraceRequest(0.0, 5, 1, "code")] + [TraceRequest(0.0, 5, 1)] * 4000
    assigned = assign_categories(requests, mix, np.random.default_rng(2))
    assert assigned[0].category == "code"
    share = sum(r.category == "cjk" for r in assigned[1:]) / 4000
    assert share == pytest.approx(0.25, abs=0.03)
    for bad in ("prose", "prose=x", "klingon=1", "prose=-1", "prose=0", ""):
        with pytest.raises(ValueError):
            CategoryMix.parse(bad)
