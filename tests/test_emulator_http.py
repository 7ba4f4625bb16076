"""The emulator over HTTP on 127.0.0.1, in-process: what a client, a proxy and a router see."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import bpe_openai
import orjson
import pytest

from extproc.emulator import EmulatorConfig, RunningEmulator, start_emulator

ENC = bpe_openai.get_encoding("cl100k_base")
FROZEN = 1_700_000_000
USER = [{"role": "user", "content": "How many tokens is this sentence?"}]
Start = Callable[..., Awaitable[RunningEmulator]]


def expected_chat_prompt(messages: list[dict[str, str]]) -> int:
    return 5 + sum(4 + len(ENC.encode_ordinary(m["role"])) + len(ENC.encode_ordinary(m["content"])) for m in messages)


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[RunningEmulator] = []

    async def _start(**overrides: Any) -> RunningEmulator:
        defaults: dict[str, Any] = {"port": 0, "latency_scale": 0, "frozen_time": FROZEN, "max_model_len": 1024,
                                    "max_num_seqs": 8}  # fmt: skip
        cfg = EmulatorConfig(**{**defaults, **overrides})
        emu = await start_emulator(cfg)
        started.append(emu)
        return emu

    yield _start
    for emu in started:
        await emu.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, bytes, str]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, **kw) as resp:
        return resp.status, await resp.read(), resp.headers.get("content-type", "")


def sse_events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"data: [DONE]\n\n")
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    return [orjson.loads(f[6:]) for f in frames[:-2]]


# ---- happy paths -------------------------------------------------------------------------------
async def test_non_streaming_chat_body_and_real_token_counts(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    status, raw, ctype = await post(http, f"{emu.url}/v1/chat/completions", {"messages": USER, "max_tokens": 7})
    assert status == 200 and ctype.startswith("application/json")
    body = orjson.loads(raw)
    assert body["object"] == "chat.completion" and body["created"] == FROZEN
    assert body["id"].startswith("chatcmpl-") and body["model"] == emu.emulator.cfg.model
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["role"] == "assistant"
    assert len(ENC.encode_ordinary(choice["message"]["content"])) == 7
    prompt = expected_chat_prompt(USER)
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "total_tokens": prompt + 7,
        "completion_tokens": 7,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


@pytest.mark.parametrize("include_usage", [None, False, True])
async def test_chat_stream_layout(start: Start, http: aiohttp.ClientSession, include_usage: bool | None) -> None:
    emu = await start()
    body: dict[str, Any] = {"messages": USER, "max_tokens": 4, "stream": True}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    status, raw, ctype = await post(http, f"{emu.url}/v1/chat/completions", body)
    assert status == 200 and ctype == "text/event-stream; charset=utf-8"
    events = sse_events(raw)
    first, *tokens = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if include_usage:
        *tokens, last = tokens
        assert last["choices"] == [] and last["usage"] == {
            "prompt_tokens": expected_chat_prompt(USER),
            "total_tokens": expected_chat_prompt(USER) + 4,
            "completion_tokens": 4,
        }
    assert len(tokens) == 4 and all(len(t["choices"]) == 1 for t in tokens)
    assert [t["choices"][0]["finish_reason"] for t in tokens] == [None, None, None, "length"]
    assert all("usage" not in e for e in events[: len(tokens) + 1])
    assert {e["id"] for e in events} == {first["id"]}
    assert all(e["object"] == "chat.completion.chunk" for e in events)


async def test_completions_string_list_and_token_ids(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    url = f"{emu.url}/v1/completions"
    _, raw, _ = await post(http, url, {"prompt": "Once upon a time"})
    body = orjson.loads(raw)
    assert body["object"] == "text_completion"
    assert body["usage"]["prompt_tokens"] == 1 + len(ENC.encode_ordinary("Once upon a time"))
    assert body["usage"]["completion_tokens"] == 16  # vLLM's default max_tokens for completions
    _, raw, _ = await post(http, url, {"prompt": ["a b", "c"], "max_tokens": 3, "stream": True,
                                       "stream_options": {}})  # fmt: skip
    events = sse_events(raw)
    assert sorted(e["choices"][0]["index"] for e in events[:-1]) == [0, 0, 0, 1, 1, 1]
    assert events[-1]["usage"]["completion_tokens"] == 6  # {} means include_usage=true in vLLM
    _, raw, _ = await post(http, url, {"prompt": [100, 200, 300], "max_tokens": 2})
    assert orjson.loads(raw)["usage"]["prompt_tokens"] == 3


async def test_same_seed_and_request_give_identical_bytes(start: Start, http: aiohttp.ClientSession) -> None:
    a, b, other = await start(seed=7), await start(seed=7), await start(seed=8)
    body = {"messages": USER, "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}
    streams = [(await post(http, f"{e.url}/v1/chat/completions", body))[1] for e in (a, b, other)]
    assert streams[0] == streams[1]
    assert streams[0] != streams[2]


async def test_models_health_metrics_and_unknown_routes(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(model="m-short", max_model_len=2048)
    async with http.get(f"{emu.url}/v1/models") as resp:
        card = (await resp.json())["data"][0]
    assert card["id"] == "m-short" and card["max_model_len"] == 2048 and card["owned_by"] == "vllm"
    async with http.get(f"{emu.url}/health") as resp:
        assert resp.status == 200
    async with http.get(f"{emu.url}/nope") as resp:
        assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}
    async with http.get(f"{emu.url}/v1/chat/completions") as resp:
        assert resp.status == 405
    await post(http, f"{emu.url}/v1/chat/completions", {"messages": USER, "max_tokens": 3})
    metrics = await scrape(http, emu)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "num_preemptions_total",
                 "num_requests_waiting_by_reason"):  # fmt: skip
        assert f"vllm:{name}" in metrics
    async with http.get(f"{emu.url}/metrics") as resp:
        page = await resp.text()
    assert 'vllm:num_requests_running{engine="0",model_name="m-short"} 0.0' in page  # vLLM 0.32's labels
    for reason in ("capacity", "deferred"):
        assert f'vllm:num_requests_waiting_by_reason{{engine="0",model_name="m-short",reason="{reason}"}}' in page
    assert metrics["vllm:request_success_total"] == 1 and metrics["vllm:generation_tokens_total"] == 3
    assert metrics["vllm:prompt_tokens_total"] == expected_chat_prompt(USER)


# ---- vLLM's errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("style", "shape", "message"),
    [
        ("v0.11", "nested", "'max_tokens' or 'max_completion_tokens' is too large: 1020. This model's maximum "
         "context length is 1024 tokens and your request has {p} input tokens (1020 > 1024 - {p}). "
         "(parameter=max_tokens, value=1020)"),
        ("legacy", "flat", "This model's maximum context length is 1024 tokens. However, you requested {t} tokens "
         "({p} in the messages, 1020 in the completion). Please reduce the length of the messages or completion."),
        ("requested", "nested", "Requested token count exceeds the model's maximum context length of 1024 tokens. "
         "You requested a total of {t} tokens: {p} tokens from the input messages and 1020 tokens for the "
         "completion. Please reduce the number of tokens in the input messages or the completion to fit within "
         "the limit."),
    ],
)  # fmt: skip
async def test_context_overflow_400(
    start: Start, http: aiohttp.ClientSession, style: str, shape: str, message: str
) -> None:
    emu = await start(vllm_behaviour=style, error_shape=shape)
    p = expected_chat_prompt(USER)
    status, raw, _ = await post(
        http, f"{emu.url}/v1/chat/completions", {"messages": USER, "max_completion_tokens": 1020}
    )
    assert status == 400
    info = {"message": message.format(p=p, t=p + 1020), "type": "BadRequestError",
            "param": "max_tokens" if style == "v0.11" else None, "code": 400}  # fmt: skip
    assert orjson.loads(raw) == ({"object": "error", **info} if shape == "flat" else {"error": info})
    fits = {"messages": USER, "max_tokens": 1024 - p}
    assert (await post(http, f"{emu.url}/v1/chat/completions", fits))[0] == 200


# ---- vLLM 0.32 (the default): the output is cut at the context; only a prompt alone over it is refused ----
async def test_prompt_plus_max_tokens_over_the_context_is_served_and_cut_there(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start()
    p = expected_chat_prompt(USER)
    status, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": USER, "max_completion_tokens": 1020})
    assert status == 200
    body = orjson.loads(raw)
    assert body["usage"]["completion_tokens"] == 1024 - p and body["choices"][0]["finish_reason"] == "length"
    stream = {"messages": USER, "max_tokens": 1010, "stream": True, "stream_options": {"include_usage": True}}
    status, raw, _ = await post(http, emu.url + CHAT_URL, stream)
    events = sse_events(raw)
    assert status == 200 and events[-1]["usage"]["completion_tokens"] == 1024 - p
    assert [e["choices"][0]["finish_reason"] for e in events[1:-1]][-1] == "length"
    _, raw, _ = await post(http, f"{emu.url}/v1/completions", {"prompt": [7] * 1000, "max_tokens": 50})
    assert orjson.loads(raw)["usage"] == {"prompt_tokens": 1000, "total_tokens": 1024, "completion_tokens": 24,
                                          "prompt_tokens_details": None,
                                          "completion_tokens_details": None}  # fmt: skip


async def test_a_cut_response_is_incomplete_and_its_stream_still_ends_completed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start()
    body = {"input": "What is BPE?", "max_output_tokens": 1020}
    out = orjson.loads((await post(http, f"{emu.url}/v1/responses", body))[1])
    p = expected_responses_prompt(None, "What is BPE?")
    assert (out["status"], out["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert out["usage"]["output_tokens"] == 1024 - p and out["max_output_tokens"] == 1020
    _, raw, _ = await post(http, f"{emu.url}/v1/responses", {**body, "stream": True})
    last = orjson.loads(raw.split(b"\n\n")[-2].split(b"\n")[1].removeprefix(b"data: "))
    assert last["type"] == "response.completed" and last["response"]["status"] == "incomplete"


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses", "batch"])
@pytest.mark.parametrize("max_tokens", [None, 8])
async def test_a_prompt_alone_over_the_context_gets_at_least_l_plus_1(
    start: Start, http: aiohttp.ClientSession, endpoint: str, max_tokens: int | None
) -> None:
    """Text is tokenized with truncation at L + 1, so vLLM 0.32 never says the real count."""
    emu = await start()
    long = "hello " * 1500
    limit = {} if max_tokens is None else {"max_output_tokens" if endpoint == "responses" else "max_tokens": max_tokens}
    path, body = {
        "chat": (CHAT_URL, {"messages": [{"role": "user", "content": long}]}),
        "completions": ("/v1/completions", {"prompt": long}),
        "responses": ("/v1/responses", {"input": long}),
        "batch": ("/v1/completions", {"prompt": ["short", long, "short"]}),
    }[endpoint]
    status, raw, _ = await post(http, emu.url + path, {**body, **limit})
    assert status == 400
    assert orjson.loads(raw) == {"error": {
        "message": "This model's maximum context length is 1024 tokens. However, your prompt contains at least 1025 "
        "input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the "
        "input prompt. (parameter=input_tokens, value=1025)",
        "type": "BadRequestError", "param": "input_tokens", "code": 400}}  # fmt: skip


async def test_a_prompt_of_exactly_the_context_leaves_max_tokens_zero(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start()
    for body in ({"prompt": [7] * 1024}, {"prompt": [7] * 1024, "max_tokens": 5}, {"prompt": [7] * 1023}):
        status, raw, _ = await post(http, f"{emu.url}/v1/completions", body)
        if len(body["prompt"]) == 1023:
            assert status == 200 and orjson.loads(raw)["usage"]["completion_tokens"] == 1
            continue
        assert status == 400
        assert orjson.loads(raw) == {"error": {
            "message": "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
            "type": "BadRequestError", "param": "max_tokens", "code": 400}}  # fmt: skip
    status, raw, _ = await post(http, f"{emu.url}/v1/completions", {"prompt": [7] * 1025, "max_tokens": 5})
    assert "your prompt contains at least 1025 input tokens" in orjson.loads(raw)["error"]["message"]  # ids: L+1 too
    status, raw, _ = await post(http, f"{emu.url}/v1/completions", {"prompt": [7] * 1100, "max_tokens": 5})
    assert "your prompt contains 1100 input tokens, which" in orjson.loads(raw)["error"]["message"]  # exact past it


async def test_an_output_limit_over_the_context_is_refused_naming_its_field(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start()
    cases = [(CHAT_URL, {"messages": USER, "max_completion_tokens": 2000}, "max_completion_tokens"),
             (CHAT_URL, {"messages": USER, "max_tokens": 2000}, "max_tokens"),
             ("/v1/responses", {"input": "hi", "max_output_tokens": 2000}, "max_output_tokens")]  # fmt: skip
    for path, body, param in cases:
        status, raw, _ = await post(http, emu.url + path, body)
        assert status == 400
        message = (f"{param}=2000 cannot be greater than max_model_len=1024. Please request fewer output tokens. "
                   f"(parameter={param}, value=2000)")  # fmt: skip
        assert orjson.loads(raw)["error"] == {"message": message, "type": "BadRequestError", "param": param,
                                              "code": 400}  # fmt: skip
    # max_completion_tokens wins over max_tokens whenever it is set, 0 included.
    both = {"messages": USER, "max_completion_tokens": 0, "max_tokens": 5}
    status, raw, _ = await post(http, emu.url + CHAT_URL, both)
    assert status == 400 and "max_tokens must be at least 1, got 0." in orjson.loads(raw)["error"]["message"]


async def test_legacy_behaviour_still_refuses_prompt_plus_max_tokens(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(vllm_behaviour="v0.18")
    status, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": USER, "max_tokens": 1020})
    assert status == 400 and "you requested 1020 output tokens" in orjson.loads(raw)["error"]["message"]
    async with http.get(f"{emu.url}/version") as resp:
        assert (await resp.json()) == {"version": "0.18.0+emulated"}


async def test_tokenize_counts_what_usage_reports(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(model="m", max_model_len=2048)
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    _, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": messages, "max_tokens": 1})
    usage = orjson.loads(raw)["usage"]["prompt_tokens"]
    status, raw, _ = await post(http, f"{emu.url}/tokenize", {"model": "m", "messages": messages})
    out = orjson.loads(raw)
    assert status == 200 and list(out) == ["count", "max_model_len", "tokens", "token_strs"]
    assert (out["count"], out["max_model_len"], len(out["tokens"]), out["token_strs"]) == (usage, 2048, usage, None)
    assert set(ENC.encode_ordinary(USER[0]["content"])) <= set(out["tokens"])  # the text's own ids
    no_prompt = {"messages": messages, "add_generation_prompt": False}
    assert orjson.loads((await post(http, f"{emu.url}/tokenize", no_prompt))[1])["count"] == usage - 4  # BOS stays
    out = orjson.loads((await post(http, f"{emu.url}/tokenize", {"prompt": "Once upon a time"}))[1])
    assert out["tokens"][1:] == ENC.encode_ordinary("Once upon a time") and out["count"] == 5  # BOS + 4
    bare = {"prompt": "Once upon a time", "add_special_tokens": False}
    assert orjson.loads((await post(http, f"{emu.url}/tokenize", bare))[1])["count"] == 4
    long = orjson.loads((await post(http, f"{emu.url}/tokenize", {"prompt": "hello " * 3000}))[1])
    # No context check: a client asks what an over-long prompt costs.
    assert long["count"] == 1 + len(ENC.encode_ordinary("hello " * 3000)) > 2048
    assert (await post(http, f"{emu.url}/tokenize", {"model": "other", "prompt": "x"}))[0] == 404
    assert (await post(http, f"{emu.url}/tokenize", {"prompt": 5}))[0] == 400


BAD = [
    (b"{not json", 400, "JSON decode error"),
    (b"[1, 2]", 400, "valid dictionary"),
    (b"\xff\xfe{}", 400, "JSON decode error"),
    (gzip.compress(b'{"messages": []}'), 400, "JSON decode error"),
    ({"max_tokens": 5}, 400, "body.messages"),
    ({"messages": "hi"}, 400, "valid list"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "body.messages.0.content"),
    ({"messages": [{"content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "sound"}]}]}, 400, "Unknown part type"),
    ({"messages": USER, "max_tokens": "abc"}, 400, "valid integer"),
    ({"messages": USER, "max_tokens": 1.5}, 400, "valid integer"),
    ({"messages": USER, "max_tokens": -1}, 400, "max_tokens must be at least 1, got -1."),
    ({"messages": USER, "max_tokens": 0}, 400, "max_tokens must be at least 1, got 0."),
    ({"messages": USER, "max_tokens": 10**12}, 400, "max_tokens=1000000000000 cannot be greater than"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, 400, "only be defined when `stream=True`"),
    ({"messages": USER, "model": "other"}, 404, "The model `other` does not exist."),
    ({"messages": USER, "tools": [{"type": "function"}]}, 400, "tools.0.function.name"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD)
async def test_malformed_requests_get_vllm_error_json(
    start: Start, http: aiohttp.ClientSession, body: Any, status: int, needle: str
) -> None:
    emu = await start()
    got, raw, ctype = await post(http, f"{emu.url}/v1/chat/completions", body, headers={"content-encoding": "gzip"}
                                 if isinstance(body, bytes) and body[:2] == b"\x1f\x8b" else None)  # fmt: skip
    assert got == status and ctype.startswith("application/json")
    err = orjson.loads(raw)["error"]
    assert needle in err["message"] and err["code"] == status


async def test_lax_integers_and_oversized_body(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(max_body_bytes=10_000)
    status, raw, _ = await post(http, f"{emu.url}/v1/chat/completions", {"messages": USER, "max_tokens": "3"})
    assert status == 200 and orjson.loads(raw)["usage"]["completion_tokens"] == 3
    big = {"messages": [{"role": "user", "content": "x" * 20_000}]}
    status, raw, _ = await post(http, f"{emu.url}/v1/chat/completions", big)
    assert status == 413 and orjson.loads(raw)["error"]["code"] == 413


# ---- scheduler visible from outside ------------------------------------------------------------
async def scrape(http: aiohttp.ClientSession, emu: RunningEmulator) -> dict[str, float]:
    async with http.get(f"{emu.url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
            out[name] = out.get(name, 0.0) + value
    return out


async def test_slots_cap_and_waiting_queue_show_in_metrics(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(max_num_seqs=2, latency_scale=1.0, decode_ms_per_step=10.0)
    body = {"messages": USER, "max_tokens": 15}
    tasks = [asyncio.create_task(post(http, f"{emu.url}/v1/chat/completions", body)) for _ in range(5)]
    seen: set[tuple[float, float]] = set()
    while not all(t.done() for t in tasks):
        m = await scrape(http, emu)
        seen.add((m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]))
        assert m["vllm:num_requests_waiting_by_reason"] == m["vllm:num_requests_waiting"]  # all for capacity
        await asyncio.sleep(0.02)
    assert all(r[0] == 200 for r in await asyncio.gather(*tasks))
    assert (2.0, 3.0) in seen and max(r for r, _ in seen) <= 2
    assert (await scrape(http, emu))["vllm:request_success_total"] == 5


async def test_tiny_kv_cache_preempts_and_counts_it(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(max_model_len=128, kv_cache_tokens=128, max_num_seqs=4)
    bodies = [{"messages": [{"role": "user", "content": f"request {i} " * 10}], "max_tokens": 60} for i in range(3)]
    results = await asyncio.gather(*(post(http, f"{emu.url}/v1/chat/completions", b) for b in bodies))
    assert all(s == 200 and orjson.loads(r)["usage"]["completion_tokens"] == 60 for s, r, _ in results)
    m = await scrape(http, emu)
    assert m["vllm:num_preemptions_total"] >= 1 and m["vllm:kv_cache_usage_perc"] == 0


async def test_client_disconnect_frees_the_slot(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(max_num_seqs=1, latency_scale=1.0, decode_ms_per_step=20.0)
    body = {"messages": USER, "max_tokens": 500, "stream": True}
    async with http.post(f"{emu.url}/v1/chat/completions", data=orjson.dumps(body)) as resp:
        await resp.content.readuntil(b"\n\n")
    for _ in range(100):
        if (await scrape(http, emu))["vllm:num_requests_running"] == 0:
            break
        await asyncio.sleep(0.02)
    m = await scrape(http, emu)
    assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0


# ---- fault knobs and the request log -----------------------------------------------------------
async def test_fault_knobs_at_runtime(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    chat = f"{emu.url}/v1/chat/completions"
    body = {"messages": USER, "max_tokens": 2}
    status, raw, _ = await post(http, f"{emu.url}/admin/faults", {"error_rate": 1.0, "error_status": 500})
    assert status == 200 and orjson.loads(raw)["error_status"] == 500
    status, raw, _ = await post(http, chat, body)
    assert status == 500 and orjson.loads(raw)["error"]["type"] == "InternalServerError"
    await post(http, f"{emu.url}/admin/faults", {"error_status": 503, "error_shape": "flat"})
    status, raw, _ = await post(http, chat, body)
    assert status == 503 and orjson.loads(raw)["object"] == "error"
    await post(http, f"{emu.url}/admin/faults", {"error_rate": 0, "usage_lie": "huge"})
    assert orjson.loads((await post(http, chat, body))[1])["usage"]["prompt_tokens"] == 10**9
    await post(http, f"{emu.url}/admin/faults", {"usage_lie": "zero"})
    stream = await post(http, chat, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert sse_events(stream[1])[-1]["usage"]["prompt_tokens"] == 0
    await post(http, f"{emu.url}/admin/faults", {"usage_lie": "none", "extra_latency_ms": 150})
    t0 = asyncio.get_running_loop().time()
    assert (await post(http, chat, body))[0] == 200
    assert asyncio.get_running_loop().time() - t0 >= 0.15
    for bad in ({"error_rate": 2}, {"usage_lie": "often"}, {"unknown": 1}, [1]):
        status, raw, _ = await post(http, f"{emu.url}/admin/faults", bad)
        assert status == 400 and "error" in orjson.loads(raw)


async def test_fault_options_at_start_and_partial_error_rate(start: Start, http: aiohttp.ClientSession) -> None:
    from extproc.emulator import FaultConfig

    emu = await start(faults=FaultConfig(error_rate=0.5, error_status=503))
    statuses = [(await post(http, f"{emu.url}/v1/completions", {"prompt": "x", "max_tokens": 1}))[0]
                for _ in range(40)]  # fmt: skip
    assert set(statuses) == {200, 503} and 8 <= statuses.count(503) <= 32


async def test_request_log_shows_headers_and_body_fingerprint(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    raw_body = orjson.dumps(
        {"messages": USER, "max_tokens": 1, "stream": True, "stream_options": {"include_usage": True}}
    )
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await post(
        http, f"{emu.url}/v1/chat/completions", raw_body, headers={"traceparent": trace, "x-budget-pool": "short"}
    )
    async with http.get(f"{emu.url}/admin/requests", params={"limit": "1"}) as resp:
        (entry,) = (await resp.json())["requests"]
    assert entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["headers"]["traceparent"] == trace and entry["headers"]["x-budget-pool"] == "short"
    assert entry["body_bytes"] == len(raw_body) == int(entry["headers"]["content-length"])
    assert entry["stream_options"] == {"include_usage": True}
    import hashlib

    assert entry["body_sha256"] == hashlib.sha256(raw_body).hexdigest()
    async with http.delete(f"{emu.url}/admin/requests") as resp:
        assert resp.status == 204
    async with http.get(f"{emu.url}/admin/requests") as resp:
        assert (await resp.json())["requests"] == []


@pytest.mark.parametrize("quirk", ["crlf", "comments", "byte_split", "bad_json", "no_usage", "truncate"])
async def test_stream_quirks_deviate_only_as_asked(start: Start, http: aiohttp.ClientSession, quirk: str) -> None:
    emu = await start()
    chat = f"{emu.url}/v1/chat/completions"
    body = {"messages": USER, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    clean = (await post(http, chat, body))[1]
    await post(http, f"{emu.url}/admin/faults", {"stream_quirk": quirk})
    if quirk == "truncate":
        got = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.post(chat, data=orjson.dumps(body)) as resp:
                async for chunk in resp.content.iter_any():
                    got += chunk
        assert clean.startswith(bytes(got)) and b"[DONE]" not in got and got.count(b"data: ") == 4
        return
    raw = (await post(http, chat, body))[1]
    usage_event = clean[clean.rindex(b"data: {") : clean.rindex(b"data: [DONE]")]
    undo = {
        "crlf": lambda b: b.replace(b"\r\n", b"\n"),
        "comments": lambda b: b.replace(b": keep-alive\n\n", b""),
        "byte_split": lambda b: b,
        "bad_json": lambda b: b.replace(b'data: {"id": "broken", "choices": [\n\n', b""),
        "no_usage": lambda b: b.replace(b"data: [DONE]", usage_event + b"data: [DONE]"),
    }[quirk]
    assert raw != clean or quirk == "byte_split"
    assert undo(raw) == clean


async def test_close_ends_inflight_streams_promptly(http: aiohttp.ClientSession) -> None:
    emu = await start_emulator(EmulatorConfig(port=0, latency_scale=1.0, decode_ms_per_step=20.0))
    body = {"messages": USER, "max_tokens": 1000, "stream": True}
    async with http.post(f"{emu.url}/v1/chat/completions", data=orjson.dumps(body)) as resp:
        await resp.content.readuntil(b"\n\n")
        t0 = asyncio.get_running_loop().time()
        await emu.close()
        rest = await resp.content.read()
    assert asyncio.get_running_loop().time() - t0 < 3.0 and b"[DONE]" not in rest


# ---- today's vLLM: context-length wordings by version ------------------------------------------
CHAT_URL = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("style", "body", "message", "param"),
    [
        ("v0.18", {"messages": USER, "max_tokens": 1020}, "This model's maximum context length is 1024 tokens. "
         "However, you requested 1020 output tokens and your prompt contains at least 5 input tokens, for a total "
         "of at least 1025 tokens. Please reduce the length of the input prompt or the number of requested output "
         "tokens. (parameter=input_tokens, value=5)", "input_tokens"),
        ("v0.16", {"messages": USER, "max_tokens": 1020}, "You passed 5 input tokens and requested 1020 output "
         "tokens. However, the model's context length is only 1024 tokens, resulting in a maximum input length of "
         "4 tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=5)",
         "input_tokens"),
        ("v0.18", {"messages": [{"role": "user", "content": "x" * 200_000}], "max_tokens": 24}, "This model's "
         "maximum context length is 1024 tokens. However, you requested 24 output tokens and your prompt contains "
         "200004 characters (more than 128000 characters, which is the upper bound for 1000 input tokens). Please "
         "reduce the length of the input prompt or the number of requested output tokens. "
         "(parameter=input_text, value=200004)", "input_text"),
        ("v0.16", {"messages": [{"role": "user", "content": "x" * 200_000}], "max_tokens": 24}, "You passed "
         "200004 input characters and requested 24 output tokens. However, the model's context length is only "
         "1024 tokens, resulting in a maximum input length of 1000 tokens (at most 128000 characters). Please "
         "reduce the length of the input prompt. (parameter=input_text, value=200004)", "input_text"),
    ],
)  # fmt: skip
async def test_renderer_era_context_errors_over_http(
    start: Start, http: aiohttp.ClientSession, style: str, body: dict, message: str, param: str
) -> None:
    """vLLM >= 0.16: text is tokenized only up to max input + 1, so the count is a lower bound."""
    emu = await start(vllm_behaviour=style)
    status, raw, _ = await post(http, emu.url + CHAT_URL, body)
    assert status == 400
    assert orjson.loads(raw) == {"error": {"message": message, "type": "BadRequestError", "param": param,
                                           "code": 400}}  # fmt: skip


async def test_token_id_prompts_get_an_exact_count_in_the_newest_wording(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start(vllm_behaviour="v0.18")
    status, raw, _ = await post(http, f"{emu.url}/v1/completions", {"prompt": list(range(100)), "max_tokens": 1000})
    assert status == 400
    assert "your prompt contains 100 input tokens, for a total of 1100 tokens." in orjson.loads(raw)["error"]["message"]


# ---- a request without an output limit gets the rest of the context ----------------------------
async def test_no_max_tokens_generates_up_to_the_end_of_the_context(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(max_model_len=256)
    p = expected_chat_prompt(USER)
    _, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": USER})
    body = orjson.loads(raw)
    assert body["usage"]["completion_tokens"] == 256 - p and body["choices"][0]["finish_reason"] == "length"
    eos = await start(max_model_len=256, eos_after_tokens=20)
    _, raw, _ = await post(http, eos.url + CHAT_URL, {"messages": USER})
    body = orjson.loads(raw)
    assert body["usage"]["completion_tokens"] == 20 and body["choices"][0]["finish_reason"] == "stop"
    _, raw, _ = await post(http, f"{emu.url}/v1/responses", {"input": "hi"})
    assert orjson.loads(raw)["usage"]["output_tokens"] == 256 - orjson.loads(raw)["usage"]["input_tokens"]


# ---- n > 1 ---------------------------------------------------------------------------------------
async def test_n_choices_count_the_prompt_once_and_every_completion(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    p = expected_chat_prompt(USER)
    _, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": USER, "max_tokens": 5, "n": 3})
    body = orjson.loads(raw)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 3  # independent samples
    assert body["usage"] == {"prompt_tokens": p, "total_tokens": p + 15, "completion_tokens": 15,
                             "prompt_tokens_details": None, "completion_tokens_details": None}  # fmt: skip
    stream = {"messages": USER, "max_tokens": 4, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    _, raw, _ = await post(http, emu.url + CHAT_URL, stream)
    *chunks, usage = sse_events(raw)
    roles = [c["choices"][0]["index"] for c in chunks if "role" in c["choices"][0]["delta"]]
    finishes = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"] == "length"]
    assert sorted(roles) == [0, 1] and sorted(finishes) == [0, 1] and len(chunks) == 2 * (1 + 4)
    assert usage["usage"] == {"prompt_tokens": p, "total_tokens": p + 8, "completion_tokens": 8}
    _, raw, _ = await post(http, f"{emu.url}/v1/completions", {"prompt": ["a", "b c"], "max_tokens": 2, "n": 2})
    body = orjson.loads(raw)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3] and body["usage"]["completion_tokens"] == 8
    assert body["usage"]["prompt_tokens"] == 2 + len(ENC.encode_ordinary("a")) + len(ENC.encode_ordinary("b c"))
    status, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": USER, "n": 0})
    assert status == 400 and "body.n" in orjson.loads(raw)["error"]["message"]


# ---- POST /v1/responses --------------------------------------------------------------------------
def expected_responses_prompt(instructions: str | None, user: str) -> int:
    """The chat count plus the tokenizer's own BOS: vLLM tokenizes Responses with special tokens on."""
    msgs = ([{"role": "system", "content": instructions}] if instructions else []) + [{"role": "user", "content": user}]
    return expected_chat_prompt(msgs) + 1


async def test_responses_json(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    body = {"model": emu.emulator.cfg.model, "instructions": "Be brief.", "input": "What is BPE?",
            "max_output_tokens": 6}  # fmt: skip
    status, raw, ctype = await post(http, f"{emu.url}/v1/responses", body)
    assert status == 200 and ctype.startswith("application/json")
    out = orjson.loads(raw)
    p = expected_responses_prompt("Be brief.", "What is BPE?")
    assert out["object"] == "response" and out["id"].startswith("resp_") and out["created_at"] == FROZEN
    assert out["usage"] == {
        "input_tokens": p, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0,
                                                    "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
        "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                                      "output_tokens_per_turn": [], "tool_output_tokens_per_turn": []},
        "total_tokens": p + 6}  # fmt: skip
    assert (out["status"], out["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert (out["instructions"], out["max_output_tokens"]) == ("Be brief.", 6)
    (message,) = out["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert len(ENC.encode_ordinary(message["content"][0]["text"])) == 6
    items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "What is BPE?"}]}],
             "max_output_tokens": 2}  # fmt: skip
    _, raw, _ = await post(http, f"{emu.url}/v1/responses", items)
    assert orjson.loads(raw)["usage"]["input_tokens"] == expected_responses_prompt(None, "What is BPE?")


async def test_responses_stream_events_end_with_usage_in_response_completed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start()
    body = {"input": "What is BPE?", "max_output_tokens": 3, "stream": True}
    status, raw, ctype = await post(http, f"{emu.url}/v1/responses", body)
    assert status == 200 and ctype == "text/event-stream; charset=utf-8"
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"" and b"[DONE]" not in raw
    events = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split(b"\n")
        payload = orjson.loads(data_line.removeprefix(b"data: "))
        assert event_line == b"event: " + payload["type"].encode()
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 3, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]  # fmt: skip
    assert all(e["response"]["usage"] is None for e in events[:2])
    final = events[-1]["response"]
    p = expected_responses_prompt(None, "What is BPE?")
    assert (final["usage"]["input_tokens"], final["usage"]["output_tokens"]) == (p, 3)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text
    status, raw, _ = await post(http, f"{emu.url}/v1/responses", {"input": "x", "n": 2, "max_output_tokens": 2})
    assert status == 200 and len(orjson.loads(raw)["output"]) == 1  # vLLM 0.32 accepts n and answers one output


async def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emu = await start()
    options = {"include_usage": True, "continuous_usage_stats": True}
    p = expected_chat_prompt(USER)
    _, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": USER, "max_tokens": 3, "stream": True,
                                                      "stream_options": options})  # fmt: skip
    events = sse_events(raw)
    assert [e["usage"]["completion_tokens"] for e in events] == [0, 1, 2, 3, 3]  # role chunk first, then the total
    assert events[1]["usage"] == {"prompt_tokens": p, "total_tokens": p + 1, "completion_tokens": 1,
                                  "completion_tokens_details": None}  # fmt: skip
    _, raw, _ = await post(http, f"{emu.url}/v1/completions", {"prompt": "a b", "max_tokens": 2, "stream": True,
                                                                "stream_options": options})  # fmt: skip
    assert [sorted(e["usage"]) for e in sse_events(raw)] == [["completion_tokens", "prompt_tokens", "total_tokens"]] * 3


async def test_validation_errors_are_fastapis_as_vllm_renders_them(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start()
    _, raw, _ = await post(http, emu.url + CHAT_URL, {"max_tokens": 4})
    assert orjson.loads(raw) == {"error": {
        "message": "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required'}",
        "type": "Bad Request", "param": "body.messages", "code": 400}}  # fmt: skip
    _, raw, _ = await post(http, emu.url + CHAT_URL, b"{not json")
    err = orjson.loads(raw)["error"]
    assert (err["type"], err["param"]) == ("Bad Request", "body.1") and "'type': 'json_invalid'" in err["message"]


async def test_responses_context_error_names_output_tokens(start: Start, http: aiohttp.ClientSession) -> None:
    emu = await start(vllm_behaviour="v0.18")
    status, raw, _ = await post(http, f"{emu.url}/v1/responses", {"input": "hello", "max_output_tokens": 1020})
    assert status == 400 and "you requested 1020 output tokens" in orjson.loads(raw)["error"]["message"]


# ---- tokenizer and template by model name --------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "encoding", "per_message", "per_request"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3", 4, 5),
        ("Qwen/Qwen3-8B", "qwen3", 4, 3),
        ("gpt-4o-mini", "o200k_base", 3, 3),
        ("gpt-4-turbo", "cl100k_base", 3, 3),
    ],
)
async def test_model_profile_auto_counts_with_the_models_tokenizer_and_template(
    start: Start, http: aiohttp.ClientSession, model: str, encoding: str, per_message: int, per_request: int
) -> None:
    import quicktok

    emu = await start(model=model, model_profile="auto")
    assert emu.emulator.cfg.encoding == encoding
    enc = quicktok.get_encoding(encoding)
    text = "Grüße aus Köln — 東京の天気は晴れです。def f(x): return x**2"
    _, raw, _ = await post(http, emu.url + CHAT_URL, {"messages": [{"role": "user", "content": text}], "max_tokens": 1})
    want = per_request + per_message + len(enc.encode_ordinary("user")) + len(enc.encode_ordinary(text))
    assert orjson.loads(raw)["usage"]["prompt_tokens"] == want


def test_model_profile_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match="no profile matches model 'mistral-7b'"):
        EmulatorConfig(model="mistral-7b", model_profile="auto").validate()
    with pytest.raises(ValueError, match="model_profile must be one of"):
        EmulatorConfig(model_profile="gpt-2").validate()
