"""The HTTP face of the emulator: vLLM's OpenAI routes, ``/metrics``, ``/health``, and ``/admin``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass

import orjson
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from extproc.emulator import stream_faults
from extproc.emulator.admin import Faults, RequestLog
from extproc.emulator.engine import Engine, Sequence, State
from extproc.emulator.engine_args import EmulatorConfig
from extproc.emulator.errors import VERSIONS, ApiError, error_body
from extproc.emulator.prometheus import metrics_registry, render
from extproc.emulator.protocol import (
    CHAT,
    COMPLETION,
    RESPONSES,
    GenerationRequest,
    PromptCounter,
    parse_generation,
    parse_json_object,
)
from extproc.emulator.responses import (
    CHAT_CHUNK,
    DONE,
    TEXT_COMPLETION,
    Envelope,
    ResponseEvents,
    ResponseHead,
    chat_body,
    chat_role_chunk,
    chat_token_chunk,
    completion_body,
    completion_chunk,
    models_body,
    response_body,
    responses_usage,
    running_usage,
    usage_chunk,
)
from extproc.emulator.text import TextSource, request_digest
from extproc.emulator.tokenize import tokenize
from extproc.emulator.tokens import TokenCounter

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
ID_PREFIX = {CHAT: "chatcmpl-", COMPLETION: "cmpl-", RESPONSES: "resp_"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


class Emulator:
    """One emulated ``vllm serve``: parses, schedules, answers; no sockets (see ``start_emulator``)."""

    def __init__(self, cfg: EmulatorConfig) -> None:
        cfg.validate()
        cfg = self.cfg = cfg.effective()
        self.bpe = TokenCounter(cfg.encoding)
        self.prompts = PromptCounter(cfg, self.bpe)
        self.text = TextSource(self.bpe)
        self.engine = Engine(cfg)
        self.faults = Faults(cfg.faults, cfg.seed)
        self.log = RequestLog(cfg.request_log_size)
        self.registry = metrics_registry(self.engine, cfg.model)
        self.closing = False
        self.fingerprint = f"vllm-{VERSIONS[cfg.vllm_behaviour]}-emulated"

    def now(self) -> int:
        return self.cfg.frozen_time if self.cfg.frozen_time is not None else int(time.time())

    # ---- application -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body_bytes, middlewares=[self._errors])
        r = app.router
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/responses", self._responses)
        r.add_get("/v1/models", self._models)
        r.add_post("/tokenize", self._tokenize)
        r.add_get("/health", self._health)
        r.add_get("/ping", self._health)
        r.add_get("/version", self._version)
        r.add_get("/metrics", self._metrics)
        if self.cfg.admin:
            r.add_get("/admin/faults", self._get_faults)
            r.add_post("/admin/faults", self._set_faults)
            r.add_get("/admin/requests", self._get_requests)
            r.add_delete("/admin/requests", self._clear_requests)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure becomes a JSON answer: vLLM's error body, or FastAPI's ``detail`` for routing."""
        try:
            return await handler(request)
        except ApiError as err:
            return _json(error_body(err, self.cfg.error_shape), err.status)
        except web.HTTPRequestEntityTooLarge as exc:
            too_large = ApiError(413, f"Request body too large: {exc.text}")
            return _json(error_body(too_large, self.cfg.error_shape), 413)
        except web.HTTPNotFound:
            return _json(b'{"detail":"Not Found"}', 404)
        except web.HTTPMethodNotAllowed:
            return _json(b'{"detail":"Method Not Allowed"}', 405)

    # ---- plain routes --------------------------------------------------------------------------
    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=503 if self.closing else 200)

    async def _version(self, _: web.Request) -> web.Response:
        return _json(orjson.dumps({"version": VERSIONS[self.cfg.vllm_behaviour] + "+emulated"}))

    async def _models(self, _: web.Request) -> web.Response:
        return _json(models_body(self.cfg.model, self.now(), self.cfg.max_model_len))

    async def _tokenize(self, request: web.Request) -> web.Response:
        return _json(tokenize(parse_json_object(await request.read()), self.cfg, self.bpe))

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=render(self.registry), headers={"content-type": CONTENT_TYPE_PLAIN_0_0_4})

    # ---- admin ---------------------------------------------------------------------------------
    async def _get_faults(self, _: web.Request) -> web.Response:
        return _json(orjson.dumps(asdict(self.faults.config)))

    async def _set_faults(self, request: web.Request) -> web.Response:
        self.faults.update(parse_json_object(await request.read()))
        return _json(orjson.dumps(asdict(self.faults.config)))

    async def _get_requests(self, request: web.Request) -> web.Response:
        try:
            n = int(request.query.get("limit", "50"))
        except ValueError:
            raise ApiError(400, "limit must be an integer") from None
        return _json(orjson.dumps({"requests": self.log.last(n)}))

    async def _clear_requests(self, _: web.Request) -> web.Response:
        self.log.clear()
        return web.Response(status=204)

    # ---- generation ----------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, CHAT)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, COMPLETION)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, RESPONSES)

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        raw = await request.read()
        entry = self.log.record(request, raw)
        try:
            body = parse_json_object(raw)
            self.log.note_body(entry, body)
            injected = self.faults.injected_error()
            if injected is not None:
                entry["status"] = injected.status
                return injected
            gen = parse_generation(kind, body, self.cfg, self.prompts)
            entry["prompt_tokens"] = list(gen.prompt_tokens)
            if self.faults.config.extra_latency_ms:
                await asyncio.sleep(self.faults.config.extra_latency_ms / 1000)
            if self.closing:
                raise ApiError(503, "The server is shutting down.")
            plan = gen.sequences()
            digests = [request_digest(self.cfg.seed, kind, raw, j) for j in range(len(plan))]
            env = Envelope(
                id=ID_PREFIX[kind] + digests[0].hex()[:32], created=self.now(), model=self.cfg.model,
                fingerprint=self.fingerprint,
            )  # fmt: skip
            texts = [self.text.tokens(d, out.tokens) for d, (_, out) in zip(digests, plan, strict=True)]
            seqs = [self.engine.submit(prompt, out.tokens, out.finish_reason) for prompt, out in plan]
            try:
                if gen.stream:
                    response = await self._stream(request, gen, env, texts, seqs, body)
                else:
                    response = await self._complete(gen, env, texts, seqs, body)
            finally:
                for seq in seqs:
                    self.engine.abort(seq)  # no-op once finished; frees the slot if the client left
        except ApiError as err:
            entry["status"] = err.status
            raise
        entry["status"] = response.status
        return response

    def _usage_prompt(self, gen: GenerationRequest) -> int:
        return self.faults.reported_prompt_tokens(sum(gen.prompt_tokens))

    @staticmethod
    def _response_head(gen: GenerationRequest, env: Envelope, body: dict) -> ResponseHead:
        instructions = body.get("instructions")
        return ResponseHead(env, instructions if isinstance(instructions, str) else None, gen.max_output_tokens)

    async def _complete(
        self, gen: GenerationRequest, env: Envelope, texts: list[list[str]], seqs: list[Sequence], body: dict
    ) -> web.Response:
        await asyncio.gather(*(_drain(seq) for seq in seqs))
        if any(seq.state is not State.FINISHED for seq in seqs):
            raise ApiError(503, "The server is shutting down.", type="ServiceUnavailableError")
        completion = sum(seq.target for seq in seqs)
        prompt = self._usage_prompt(gen)
        choices = [("".join(t), seq.finish_reason) for t, seq in zip(texts, seqs, strict=True)]
        if gen.kind == RESPONSES:
            head = self._response_head(gen, env, body)
            return _json(response_body(head, choices[0][0], choices[0][1], prompt, completion))
        render = chat_body if gen.kind == CHAT else completion_body
        return _json(render(env, choices, prompt, completion))

    async def _stream(
        self,
        request: web.Request,
        gen: GenerationRequest,
        env: Envelope,
        texts: list[list[str]],
        seqs: list[Sequence],
        body: dict,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": SSE_CONTENT_TYPE})
        await response.prepare(request)
        quirk = self.faults.config.stream_quirk
        cut = stream_faults.cut_after(quirk, sum(seq.target for seq in seqs))
        events = ResponseEvents(self._response_head(gen, env, body)) if gen.kind == RESPONSES else None
        sent = [0] * len(seqs)
        prompts = [prompt for prompt, _ in gen.sequences()]
        chat = gen.kind == CHAT
        running = (lambda i, done: running_usage(prompts[i], done, chat)) if gen.continuous_usage else None
        try:
            if events is not None:
                await _write(response, quirk, events.start())
            if chat:  # every choice's role chunk first, as vLLM sends them on its first iteration
                start = b"".join(chat_role_chunk(env, i, running and running(i, 0)) for i in range(len(seqs)))
                await _write(response, quirk, start)
            async for index, generated in _merged_progress(seqs):
                out = bytearray()
                seq = seqs[index]
                for k in range(sent[index], generated):
                    finish = seq.finish_reason if k == seq.target - 1 else None
                    tok = texts[index][k]
                    usage = running and running(index, k + 1)
                    last = not gen.include_usage
                    if events is not None:
                        out += events.delta(tok)
                    elif chat:
                        out += chat_token_chunk(env, tok, finish, index, usage, last)
                    else:
                        out += completion_chunk(env, index, tok, finish, usage, last)
                sent[index] = generated
                await _write(response, quirk, bytes(out))
                if cut is not None and sum(sent) >= cut:
                    if request.transport is not None:
                        request.transport.close()  # the upstream dies mid-stream
                    return response
            if any(seq.state is not State.FINISHED for seq in seqs):
                return response  # shutting down: end the stream without [DONE], as a dying server would
            await _write(response, quirk, self._stream_end(gen, env, events, texts, seqs, sum(sent)))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the caller frees the sequences
        return response

    def _stream_end(
        self,
        gen: GenerationRequest,
        env: Envelope,
        events: ResponseEvents | None,
        texts: list[list[str]],
        seqs: list[Sequence],
        completion: int,
    ) -> bytes:
        """The usage chunk and ``[DONE]``, or the Responses API's closing events (usage in the last)."""
        quirk = self.faults.config.stream_quirk
        if events is not None:
            final = None if quirk == "no_usage" else responses_usage(self._usage_prompt(gen), completion)
            closing = events.finish("".join(texts[0]), seqs[0].finish_reason, final)
            return stream_faults.tail(quirk if quirk == "bad_json" else "none", closing, b"")
        usage = b""
        if gen.include_usage:
            obj = CHAT_CHUNK if gen.kind == CHAT else TEXT_COMPLETION
            usage = usage_chunk(env, obj, self._usage_prompt(gen), completion)
        return stream_faults.tail(quirk, usage, DONE)


async def _write(response: web.StreamResponse, quirk: str, data: bytes) -> None:
    for piece in stream_faults.shape(quirk, data):
        await response.write(piece)


async def _drain(seq: Sequence) -> None:
    async for _ in Engine.progress(seq):
        pass


async def _merged_progress(seqs: list[Sequence]) -> AsyncIterator[tuple[int, int]]:
    """(prompt index, tokens generated so far) from several sequences as they advance."""
    if len(seqs) == 1:
        async for n in Engine.progress(seqs[0]):
            yield 0, n
        return
    queue: asyncio.Queue[tuple[int, int | None]] = asyncio.Queue()

    async def pump(i: int, seq: Sequence) -> None:
        async for n in Engine.progress(seq):
            queue.put_nowait((i, n))
        queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(seqs)]
    try:
        remaining = len(seqs)
        while remaining:
            i, step = await queue.get()
            if step is None:
                remaining -= 1
            else:
                yield i, step
    finally:
        for t in tasks:
            t.cancel()


@dataclass
class RunningEmulator:
    """A started emulator; ``close()`` aborts in-flight work and frees the port."""

    emulator: Emulator
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        self.emulator.closing = True
        await self.emulator.engine.close()
        await self.runner.cleanup()


async def start_emulator(cfg: EmulatorConfig) -> RunningEmulator:
    """Start serving ``cfg`` on its host/port (port 0 picks a free one) in the running event loop."""
    emulator = Emulator(cfg)
    runner = web.AppRunner(
        emulator.app(),
        access_log=None,
        handler_cancellation=True,
        auto_decompress=False,  # like uvicorn: a gzip body reaches the JSON parser as gzip
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    emulator.engine.start()
    port = runner.addresses[0][1]
    return RunningEmulator(emulator=emulator, runner=runner, host=cfg.host, port=port)
