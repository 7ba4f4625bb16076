"""The vLLM /metrics reader: the three series, real exposition details, and never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.algorithm.pressure import EngineLoad
from extproc.server.vllm_metrics import parse_engine_load, sample_values

VLLM_PAGE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B"} 7.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B"} 0.61
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="vllm:num_requests_running 50"} 0.0
"""


def test_reads_vllm_page_summing_engines_and_taking_the_fullest_cache() -> None:
    assert parse_engine_load(VLLM_PAGE) == EngineLoad(running=12.0, waiting=3.0, kv_usage=0.61)


def test_deprecated_gpu_cache_usage_is_read_when_the_new_name_is_absent() -> None:
    page = b'vllm:num_requests_running{model_name="m"} 1\nvllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_engine_load(page) == EngineLoad(1.0, 0.0, 0.5)
    both = page + b'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    assert parse_engine_load(both) == EngineLoad(1.0, 0.0, 0.25)


def test_label_values_with_braces_quotes_and_timestamps() -> None:
    page = b'vllm:num_requests_waiting{model_name="a}b\\"c"} 4 1700000000000\r\nvllm:num_requests_running 2\n'
    assert parse_engine_load(page) == EngineLoad(2.0, 4.0, 0.0)


def test_not_a_vllm_page_is_none() -> None:
    assert parse_engine_load(b"<html>502 Bad Gateway</html>") is None
    assert parse_engine_load(b"") is None
    assert parse_engine_load(b'vllm:num_requests_running{engine="0" 3\n') is None  # unterminated labels


def test_nonsense_values_are_skipped() -> None:
    page = b"vllm:num_requests_running NaN\nvllm:num_requests_running -3\nvllm:num_requests_running +Inf\n"
    assert sample_values(page, b"vllm:num_requests_running") == []
    assert parse_engine_load(page + b"vllm:num_requests_waiting 1\n") == EngineLoad(0.0, 1.0, 0.0)


line = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda name, labels, value: name + labels + b" " + value,
        st.sampled_from([b"vllm:num_requests_running", b"vllm:num_requests_waiting", b"vllm:kv_cache_usage_perc"]),
        st.one_of(st.just(b""), st.binary(max_size=30).map(lambda b: b"{" + b)),
        st.one_of(st.binary(max_size=10), st.floats().map(lambda f: repr(f).encode())),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(line, max_size=20).map(lambda lines: b"\n".join(lines)))
def test_never_raises_and_only_yields_sane_loads(page: bytes) -> None:
    load = parse_engine_load(page)
    if load is not None:
        assert load.running >= 0 and load.waiting >= 0 and 0.0 <= load.kv_usage <= 1.0
