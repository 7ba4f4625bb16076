"""The ext_proc gRPC service: one coroutine per Envoy stream (an LLM stream can live for minutes, so
a thread per stream would cap concurrency), plus health and graceful drain."""

from __future__ import annotations

import asyncio
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.server import envoy_wire as em
from extproc.server.exchange import Exchange, RouterRuntime

log = logging.getLogger("budget_router.service")
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


class ExternalProcessor(epg.ExternalProcessorServicer):
    def __init__(self, rt: RouterRuntime) -> None:
        self.rt = rt
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def Process(
        self, request_iterator: object, context: grpc.aio.ServicerContext[em.ProcessingRequest, em.ProcessingResponse]
    ) -> None:
        self.active += 1
        self._idle.clear()
        # text metadata only: a binary (-bin) value carries nothing the router reads (traceparent is text)
        metadata = [(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)]
        ex = Exchange(self.rt, metadata)
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                try:
                    resp = ex.handle(req)
                    if resp is None:  # the router wants the engine's count first (bounded wait)
                        resp = await self._counted(ex)
                except Exception as exc:
                    await self._fail(ex, em.phase_of(req), exc, context)  # raises: the stream ends
                    raise
                await context.write(resp)
                if ex.done:  # clean close: Envoy proceeds without consulting us (ext_proc protocol)
                    break
                # The next message may be minutes away (a generation): the stream must not keep this
                # one's body (or our rewrite of it) alive meanwhile; the exchange's budget counts the rest.
                del req, resp
        except asyncio.CancelledError:
            pass  # Envoy reset the stream (client gone): nothing to answer
        finally:
            ex.close()
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def _counted(self, ex: Exchange) -> em.ProcessingResponse:
        wanted, counter = ex.count_wanted, self.rt.counter
        assert wanted is not None and counter is not None, "an exchange wants a count only with a counter"
        return ex.counted(await counter.count(wanted.pool, wanted.payload))

    async def _fail(
        self,
        ex: Exchange,
        phase: str,
        exc: Exception,
        context: grpc.aio.ServicerContext[em.ProcessingRequest, em.ProcessingResponse],
    ) -> None:
        """A router bug: end the stream with a gRPC error, so Envoy's failure mode decides (fail-open
        continues unrouted, i.e. to the long pool; fail-closed answers 5xx) instead of us guessing."""
        trace_id, request_id = ex.trace_and_request_id()
        log.error(
            "router error in %s (trace_id=%s request_id=%s); ending the stream with INTERNAL",
            phase,
            trace_id or "-",
            request_id or "-",
            exc_info=exc,
        )
        ex.rt.observer.failed(ex.record, phase)
        await context.abort(grpc.StatusCode.INTERNAL, f"budget-router: internal error in {phase}")

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class RouterServer:
    """A running gRPC server with health; ``stop()`` is the graceful SIGTERM path."""

    def __init__(self, rt: RouterRuntime) -> None:
        self.rt = rt
        cfg = rt.cfg.server
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        self.server = grpc.aio.server(options=options)
        self.processor = ExternalProcessor(rt)
        epg.add_ExternalProcessorServicer_to_server(self.processor, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(cfg.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")

    async def _set_health(self, status: int) -> None:
        for name in ("", EXT_PROC_SERVICE):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (Envoy's health check stops sending new streams), drain, then stop."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        drained = await self.processor.drained(grace)
        if not drained:
            log.warning("%d streams still open after %.1fs grace; stopping", self.processor.active, grace)
        await self.server.stop(max(0.0, deadline - loop.time()))

    async def wait(self) -> None:
        await self.server.wait_for_termination()
