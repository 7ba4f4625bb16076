"""Pure logic of the emulator: exact BPE counts, prompt accounting, vLLM's error texts, the scheduler."""

from __future__ import annotations

import asyncio

import bpe_openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.algorithm.budget import IMAGE_TOKENS
from extproc.emulator.engine import Engine, State
from extproc.emulator.engine_args import EmulatorConfig, FaultConfig
from extproc.emulator.errors import ApiError, PromptSize, context_length_error
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
    return PromptCounter(EmulatorConfig(), COUNTER).chat(body).tokens


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
        + (4 + bpe("user") + bpe("look:") + IMAGE_TOKENS)
        + (4 + bpe("assistant") + bpe(orjson.dumps(calls).decode()))
        + (4 + bpe("tool") + bpe("c1") + bpe("sunny"))
        + bpe(orjson.dumps(tools).decode())
    )
    assert chat_tokens(body) == want


def test_completion_prompts() -> None:
    pc = PromptCounter(EmulatorConfig(), COUNTER)
    assert pc.completion({"prompt": "hello world"}) == (PromptSize(1 + bpe("hello world"), 11),)
    assert pc.completion({"prompt": ["a", "b c"]}) == (PromptSize(1 + bpe("a"), 1), PromptSize(1 + bpe("b c"), 3))
    assert pc.completion({"prompt": [1, 2, 3]}) == (PromptSize(3),)
    assert pc.completion({"prompt": [[1], [2, 3]]}) == (PromptSize(1), PromptSize(2))
    with pytest.raises(ApiError, match="out of vocabulary"):
        pc.completion({"prompt": [10**9]})


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                *("messages", "prompt", "input", "instructions", "max_tokens", "max_output_tokens"),
                *("stream", "stream_options", "model", "n", "tools"),
            ]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
            max_leaves=8,
        ),
    ),
    st.sampled_from(["chat", "completion", "responses"]),
)
def test_any_json_body_is_served_or_answered_with_an_api_error(body: dict, kind: str) -> None:
    cfg = EmulatorConfig(max_model_len=256, max_num_seqs=4)
    try:
        gen = parse_generation(kind, body, cfg, PromptCounter(cfg, COUNTER))
    except ApiError as err:
        assert err.status in (400, 404) and err.message
    else:
        assert all(0 < p < cfg.max_model_len for p in gen.prompt_tokens) and gen.n >= 1
        assert all(p + out.tokens <= cfg.max_model_len for p, out in gen.sequences())


# ---- vLLM error texts --------------------------------------------------------------------------
def test_context_messages_of_each_style() -> None:
    text = PromptSize(40, chars=160)
    assert context_length_error("v0.11", 100, text, 60) is None
    cur = context_length_error("v0.11", 100, text, 61)
    assert cur is not None and cur.param == "max_tokens"
    assert cur.message == (
        "'max_tokens' or 'max_completion_tokens' is too large: 61. This model's maximum context length is "
        "100 tokens and your request has 40 input tokens (61 > 100 - 40). (parameter=max_tokens, value=61)"
    )
    full = context_length_error("v0.11", 100, PromptSize(100, 400), None)
    assert full is not None and full.message == (
        "This model's maximum context length is 100 tokens. However, your request has 100 input tokens. "
        "Please reduce the length of the input messages. (parameter=input_tokens, value=100)"
    )
    legacy = context_length_error("legacy", 100, text, 61)
    assert legacy is not None and legacy.message == (
        "This model's maximum context length is 100 tokens. However, you requested 101 tokens "
        "(40 in the messages, 61 in the completion). Please reduce the length of the messages or completion."
    )
    req = context_length_error("requested", 100, text, 61)
    assert req is not None and req.message.startswith(
        "Requested token count exceeds the model's maximum context length of 100 tokens. "
        "You requested a total of 101 tokens: 40 tokens from the input messages and 61 tokens for the completion."
    )


# vLLM >= 0.16 tokenizes text with truncation at (max input + 1): a text prompt's count is a lower bound.
RENDERER_CASES = [
    # (style, prompt, max_tokens, message, param, value)
    ("v0.18", PromptSize(50, 200), 61, "This model's maximum context length is 100 tokens. However, you requested "
     "61 output tokens and your prompt contains at least 40 input tokens, for a total of at least 101 tokens. "
     "Please reduce the length of the input prompt or the number of requested output tokens.", "input_tokens", 40),
    ("v0.18", PromptSize(50), 61, "This model's maximum context length is 100 tokens. However, you requested "
     "61 output tokens and your prompt contains 50 input tokens, for a total of 111 tokens. "
     "Please reduce the length of the input prompt or the number of requested output tokens.", "input_tokens", 50),
    ("v0.18", PromptSize(50, 5000), 61, "This model's maximum context length is 100 tokens. However, you requested "
     "61 output tokens and your prompt contains 5000 characters (more than 4992 characters, which is the upper "
     "bound for 39 input tokens). Please reduce the length of the input prompt or the number of requested output "
     "tokens.", "input_text", 5000),
    ("v0.16", PromptSize(50, 200), 61, "You passed 40 input tokens and requested 61 output tokens. However, the "
     "model's context length is only 100 tokens, resulting in a maximum input length of 39 tokens. Please reduce "
     "the length of the input prompt.", "input_tokens", 40),
    ("v0.16", PromptSize(50, 5000), 61, "You passed 5000 input characters and requested 61 output tokens. However, "
     "the model's context length is only 100 tokens, resulting in a maximum input length of 39 tokens (at most "
     "4992 characters). Please reduce the length of the input prompt.", "input_text", 5000),
    ("v0.18", PromptSize(100, 400), None, "This model's maximum context length is 100 tokens. However, you "
     "requested 0 output tokens and your prompt contains at least 100 input tokens, for a total of at least 100 "
     "tokens. Please reduce the length of the input prompt or the number of requested output tokens.",
     "input_tokens", 100),
]  # fmt: skip


@pytest.mark.parametrize(("style", "prompt", "max_tokens", "message", "param", "value"), RENDERER_CASES)
def test_renderer_era_messages(
    style: str, prompt: PromptSize, max_tokens: int | None, message: str, param: str, value: int
) -> None:
    err = context_length_error(style, 100, prompt, max_tokens, max_chars_per_token=128)
    assert err is not None and err.param == param
    assert err.message == f"{message} (parameter={param}, value={value})"


@pytest.mark.parametrize("style", ["v0.18", "v0.16", "v0.11", "legacy", "requested"])
@given(prompt=st.integers(1, 300), max_tokens=st.none() | st.integers(1, 300))
def test_every_style_refuses_exactly_what_does_not_fit(style: str, prompt: int, max_tokens: int | None) -> None:
    """The same requests fail in every wording: prompt + max_tokens over the context, or no room left."""
    err = context_length_error(style, 100, PromptSize(prompt, prompt), max_tokens)
    fits = prompt + (max_tokens or 1) <= 100
    assert (err is None) == fits


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
