"""Pure logic of the emulator: exact BPE counts, prompt accounting, vLLM's error texts, the scheduler."""

from __future__ import annotations

import asyncio

import bpe_openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.emulator.engine import Engine, State
from extproc.emulator.engine_args import EmulatorConfig, FaultConfig
from extproc.emulator.errors import ApiError, context_length_error
from extproc.emulator.protocol import PromptCounter, parse_generation
from extproc.emulator.tokens import TokenCounter, windows

ENC = bpe_openai.get_encoding("cl100k_base")
O200K = bpe_openai.get_encoding("o200k_base")
COUNTER = TokenCounter("cl100k_base")


def bpe(text: str) -> int:
    return len(ENC.encode_ordinary(text))


# ---- tokens ------------------------------------------------------------------------------------
TEXTISH = st.text(alphabet=st.sampled_from(list("ab Zé中\n\r\t.,'{}0123 ")), max_size=600)


@settings(max_examples=150, deadline=None)
@given(TEXTISH, st.integers(min_value=8, max_value=120))
def test_windowed_count_equals_whole_text_count(text: str, size: int) -> None:
    pieces = windows(text, size)
    assert "".join(pieces) == text
    assert all(len(p) <= size for p in pieces)
    cuts = [sum(len(p) for p in pieces[:i]) for i in range(1, len(pieces))]
    if all(_certain_boundary(text, i) for i in cuts):  # blind cuts only where no boundary existed
        assert sum(bpe(p) for p in pieces) == bpe(text)
        assert sum(len(O200K.encode_ordinary(p)) for p in pieces) == len(O200K.encode_ordinary(text))


def _certain_boundary(text: str, i: int) -> bool:
    after_space = text[i] == " " and i + 1 < len(text) and text[i + 1].isalpha() and not text[i - 1].isspace()
    after_break = text[i - 1] in "\r\n" and text[i].isalnum()
    return after_space or after_break


def test_megabyte_prompt_is_counted_exactly() -> None:
    # Each paragraph ends in a line break and starts with a letter, so no pre-token spans two of
    # them: the whole text has exactly k times one paragraph's tokens.
    para = "The router estimates tokens, then routes.\n" + "def f(x):\n    return x * 2\n" + "长文本测试。\n"
    k = 1_000_000 // len(para) + 1
    text = para * k
    assert len(text) >= 1_000_000
    assert COUNTER.count(text) == k * bpe(para)
    head = text[:300_000]
    assert COUNTER.count(head) == bpe(head)


# ---- prompt accounting -------------------------------------------------------------------------
def chat_tokens(body: dict) -> int:
    return PromptCounter(EmulatorConfig(), COUNTER).chat(body)


def test_chat_prompt_tokens_are_bpe_plus_template() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is BPE?"}]
    want = 5 + sum(4 + bpe(m["role"]) + bpe(m["content"]) for m in msgs)
    assert chat_tokens({"messages": msgs}) == want


def test_parts_tools_and_tool_calls_are_counted() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    parts = [{"type": "text", "text": "look:"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    body = {
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": tools,
    }
    want = (
        5
        + (4 + bpe("user") + bpe("look:") + 576)
        + (4 + bpe("assistant") + bpe(orjson.dumps(calls).decode()))
        + (4 + bpe("tool") + bpe("c1") + bpe("sunny"))
        + bpe(orjson.dumps(tools).decode())
    )
    assert chat_tokens(body) == want


def test_completion_prompts() -> None:
    pc = PromptCounter(EmulatorConfig(), COUNTER)
    assert pc.completion({"prompt": "hello world"}) == (1 + bpe("hello world"),)
    assert pc.completion({"prompt": ["a", "b c"]}) == (1 + bpe("a"), 1 + bpe("b c"))
    assert pc.completion({"prompt": [1, 2, 3]}) == (3,)
    assert pc.completion({"prompt": [[1], [2, 3]]}) == (1, 2)
    with pytest.raises(ApiError, match="out of vocabulary"):
        pc.completion({"prompt": [10**9]})


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["messages", "prompt", "max_tokens", "stream", "stream_options", "model", "n", "tools"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
            max_leaves=8,
        ),
    ),
    st.sampled_from(["chat", "completion"]),
)
def test_any_json_body_is_served_or_answered_with_an_api_error(body: dict, kind: str) -> None:
    cfg = EmulatorConfig(max_model_len=256, max_num_seqs=4)
    try:
        gen = parse_generation(kind, body, cfg, PromptCounter(cfg, COUNTER))
    except ApiError as err:
        assert err.status in (400, 404) and err.message
    else:
        assert all(0 < p < cfg.max_model_len for p in gen.prompt_tokens)
        assert all(p + gen.output_tokens <= cfg.max_model_len for p in gen.prompt_tokens)


# ---- vLLM error texts --------------------------------------------------------------------------
def test_context_messages_of_each_style() -> None:
    assert context_length_error("current", 100, 40, 60) is None
    cur = context_length_error("current", 100, 40, 61)
    assert cur is not None and cur.param == "max_tokens"
    assert cur.message == (
        "'max_tokens' or 'max_completion_tokens' is too large: 61. This model's maximum context length is "
        "100 tokens and your request has 40 input tokens (61 > 100 - 40). (parameter=max_tokens, value=61)"
    )
    full = context_length_error("current", 100, 100, None)
    assert full is not None and full.message == (
        "This model's maximum context length is 100 tokens. However, your request has 100 input tokens. "
        "Please reduce the length of the input messages. (parameter=input_tokens, value=100)"
    )
    legacy = context_length_error("legacy", 100, 40, 61)
    assert legacy is not None and legacy.message == (
        "This model's maximum context length is 100 tokens. However, you requested 101 tokens "
        "(40 in the messages, 61 in the completion). Please reduce the length of the messages or completion."
    )
    req = context_length_error("requested", 100, 40, 61)
    assert req is not None and req.message.startswith(
        "Requested token count exceeds the model's maximum context length of 100 tokens. "
        "You requested a total of 101 tokens: 40 tokens from the input messages and 61 tokens for the completion."
    )


def test_config_rejects_bad_values() -> None:
    for bad in (
        EmulatorConfig(max_num_seqs=0),
        EmulatorConfig(encoding="gpt2"),
        EmulatorConfig(max_model_len=1000, kv_cache_tokens=500),
        EmulatorConfig(latency_scale=-1),
        EmulatorConfig(faults=FaultConfig(usage_lie="sometimes")),
    ):
        with pytest.raises(ValueError):
            bad.validate()
    with pytest.raises(ValueError, match="unknown fault"):
        FaultConfig().updated({"nope": 1})
    with pytest.raises(ValueError, match="must be float"):
        FaultConfig().updated({"error_rate": "1"})


# ---- scheduler ---------------------------------------------------------------------------------
async def test_slots_cap_running_and_the_rest_wait_fifo() -> None:
    engine = Engine(EmulatorConfig(max_model_len=256, max_num_seqs=2, latency_scale=0))
    seqs = [engine.submit(10, 5, "length") for _ in range(5)]
    assert engine._admit() == 20
    assert engine.running == seqs[:2] and list(engine.waiting) == seqs[2:]
    engine.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(_drain(engine, s) for s in seqs)), 5)
    finally:
        await engine.close()
    assert all(s.state is State.FINISHED and s.generated == 5 for s in seqs)
    assert engine.finished["length"] == 5 and engine.generation_tokens_total == 25
    assert engine.used_blocks == 0


async def test_kv_exhaustion_preempts_the_newest_and_both_still_finish() -> None:
    cfg = EmulatorConfig(max_model_len=64, max_num_seqs=4, kv_cache_tokens=64, block_size=16, latency_scale=0)
    engine = Engine(cfg)
    old, new = engine.submit(20, 40, "length"), engine.submit(20, 40, "length")
    engine.start()
    try:
        await asyncio.wait_for(asyncio.gather(_drain(engine, old), _drain(engine, new)), 5)
    finally:
        await engine.close()
    assert old.preemptions == 0 and new.preemptions >= 1
    assert engine.preemptions_total == new.preemptions
    assert old.generated == new.generated == 40
    assert engine.used_blocks == 0


async def test_abort_frees_slot_and_blocks() -> None:
    engine = Engine(EmulatorConfig(max_model_len=256, max_num_seqs=1, latency_scale=0))
    a, b = engine.submit(100, 50, "length"), engine.submit(10, 5, "length")
    engine._admit()
    assert engine.used_blocks > 0 and b.state is State.WAITING
    engine.abort(a)
    engine.abort(b)
    assert engine.used_blocks == 0 and not engine.running and not engine.waiting
    assert engine.finished["abort"] == 2


async def _drain(engine: Engine, seq) -> None:
    async for _ in engine.progress(seq):
        pass
