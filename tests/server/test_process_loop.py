"""The service's ``Process`` loop against an in-memory stream: the stream's edge cases (receive and
send errors, cancellation, Envoy closing early, a message the exchange chokes on) in milliseconds,
beside the real-gRPC tests in test_grpc_server.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import orjson
import pytest

from extproc.config import load_config
from extproc.server import envoy_wire as em
from extproc.server.events import ExchangeObserver, ExchangeRecord
from extproc.server.exchange import RouterRuntime
from extproc.server.service import ExternalProcessor
from tests.envoy_play import request_body, request_headers, response_body, response_headers, set_headers

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 10})
USAGE = b'{"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":10}}'


class Finished(ExchangeObserver):
    """Remembers every finished exchange (the observer contract: exactly one per stream)."""

    def __init__(self) -> None:
        self.records: list[ExchangeRecord] = []

    def finished(self, record: ExchangeRecord) -> None:
        self.records.append(record)


class FakeStream:
    """The servicer context of one ext_proc stream: ``read`` hands out ``messages`` then EOF (Envoy
    half-closed), or raises ``read_error`` once they run out, or blocks forever when ``hang``;
    ``write`` records responses, raising ``write_error`` on the ``fail_write``-th one."""

    def __init__(
        self,
        messages: Sequence[em.ProcessingRequest],
        *,
        read_error: BaseException | None = None,
        hang: bool = False,
        write_error: BaseException | None = None,
        fail_write: int = 0,
    ) -> None:
        self.messages = list(messages)
        self.read_error, self.hang = read_error, hang
        self.write_error, self.fail_write = write_error, fail_write
        self.written: list[em.ProcessingResponse] = []
        self.waiting = asyncio.Event()  # set once a read blocks (hang)
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-test", "1"),)

    async def read(self) -> em.ProcessingRequest | object:
        if self.messages:
            return self.messages.pop(0)
        if self.read_error is not None:
            raise self.read_error
        if self.hang:
            self.waiting.set()
            await asyncio.Event().wait()
        return grpc.aio.EOF

    async def write(self, resp: em.ProcessingResponse) -> None:
        if self.write_error is not None and len(self.written) + 1 == self.fail_write:
            raise self.write_error
        self.written.append(resp)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        """Like grpc.aio's: remembers the status and raises, ending the handler."""
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.fixture
def observer() -> Finished:
    return Finished()


@pytest.fixture
def service(observer: Finished) -> ExternalProcessor:
    cfg = load_config(env={}, overrides={"calibration": {"state_file": ""}})
    return ExternalProcessor(RouterRuntime.from_config(cfg, observer))


def in_flight(service: ExternalProcessor) -> dict[str, int]:
    return service.rt.router.pressure.in_flight  # type: ignore[attr-defined]


async def test_a_whole_exchange_answers_each_message_and_learns(service: ExternalProcessor, observer: Finished):
    stream = FakeStream([request_headers(), request_body(BODY), response_headers(), response_body(USAGE)])
    await service.Process(iter(()), stream)  # type: ignore[arg-type]
    kinds = [r.WhichOneof("response") for r in stream.written]
    assert kinds == ["request_headers", "request_body", "response_headers", "response_body"]
    assert set_headers(stream.written[1].request_body.response.header_mutation)["x-budget-pool"] == "short"
    assert service.rt.router.calibrator.state("prose").samples == 1
    assert in_flight(service) == {"short": 0, "long": 0} and service.active == 0
    [record] = observer.records
    assert record.usage_source == "json" and record.pool == "short"


async def test_envoy_closing_after_the_decision_releases_the_pool(service: ExternalProcessor, observer: Finished):
    stream = FakeStream([request_headers(), request_body(BODY)])  # then EOF: the client went away
    await service.Process(iter(()), stream)  # type: ignore[arg-type]
    assert len(stream.written) == 2
    assert in_flight(service) == {"short": 0, "long": 0} and await service.drained(0.1)
    [record] = observer.records
    assert record.observed and record.usage_source == "" and record.pool == "short"


def unsampled_service() -> ExternalProcessor:
    cfg = load_config(env={}, overrides={"calibration": {"state_file": "", "converged_sample_rate": 0.0}})
    service = ExternalProcessor(RouterRuntime.from_config(cfg))
    service.rt.router.calibrator.load({"prose": {"mean": 4.5, "dev": 0.1, "samples": 500}})
    return service


async def test_an_unobserved_request_that_fits_at_any_ratio_closes_the_stream_after_the_decision():
    service = unsampled_service()
    stream = FakeStream([request_headers(), request_body(BODY), response_headers(), response_body(USAGE)])
    await service.Process(iter(()), stream)  # type: ignore[arg-type]
    assert len(stream.written) == 2 and len(stream.messages) == 2  # no response message is read
    assert service.active == 0 and service.rt.router.calibrator.state("prose").samples == 500


async def test_an_unobserved_request_closes_the_stream_right_after_the_response_status():
    service = unsampled_service()
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello " * 750}], "max_tokens": 10})
    stream = FakeStream([request_headers(), request_body(body), response_headers(), response_body(USAGE)])
    await service.Process(iter(()), stream)  # type: ignore[arg-type]
    assert len(stream.written) == 3 and len(stream.messages) == 1  # the status is seen, the body never read
    assert stream.written[2].mode_override.response_body_mode == em.NONE
    assert service.rt.router.calibrator.state("prose").samples == 500


async def test_a_receive_error_ends_the_stream_and_still_closes_the_exchange(
    service: ExternalProcessor, observer: Finished
):
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "reset")
    stream = FakeStream([request_headers(), request_body(BODY)], read_error=error)
    with pytest.raises(grpc.aio.AioRpcError):
        await service.Process(iter(()), stream)  # type: ignore[arg-type]
    assert in_flight(service) == {"short": 0, "long": 0} and service.active == 0
    assert len(observer.records) == 1


async def test_a_send_error_ends_the_stream_and_still_closes_the_exchange(
    service: ExternalProcessor, observer: Finished
):
    stream = FakeStream(
        [request_headers(), request_body(BODY), response_headers()], write_error=ConnectionResetError(), fail_write=3
    )
    with pytest.raises(ConnectionResetError):
        await service.Process(iter(()), stream)  # type: ignore[arg-type]
    assert len(stream.written) == 2
    assert in_flight(service) == {"short": 0, "long": 0} and service.active == 0
    assert len(observer.records) == 1


async def test_cancellation_while_waiting_for_the_response_is_a_quiet_close(
    service: ExternalProcessor, observer: Finished
):
    stream = FakeStream([request_headers(), request_body(BODY)], hang=True)
    task = asyncio.create_task(service.Process(iter(()), stream))  # type: ignore[arg-type]
    await asyncio.wait_for(stream.waiting.wait(), 5)
    assert in_flight(service)["short"] == 1 and service.active == 1 and not await service.drained(0.01)
    task.cancel()
    await asyncio.wait_for(task, 5)  # Envoy reset the stream: nothing to answer, no error
    assert in_flight(service) == {"short": 0, "long": 0} and await service.drained(0.1)
    assert len(observer.records) == 1


async def test_a_message_the_exchange_chokes_on_ends_the_stream_with_internal(caplog: pytest.LogCaptureFixture):
    """A router bug is not papered over with "continue": the stream ends with INTERNAL so Envoy's
    failure mode decides, the failure is reported to the observer, and the exchange still closes."""

    class Choking(Finished):
        def __init__(self) -> None:
            super().__init__()
            self.failures: list[str] = []

        def decided(self, record: ExchangeRecord) -> None:
            raise RuntimeError("boom")

        def failed(self, record: ExchangeRecord, phase: str) -> None:
            self.failures.append(phase)

    observer = Choking()
    cfg = load_config(env={}, overrides={"calibration": {"state_file": ""}})
    service = ExternalProcessor(RouterRuntime.from_config(cfg, observer))
    stream = FakeStream([request_headers(), request_body(BODY), response_headers(), response_body(USAGE)])
    with pytest.raises(grpc.aio.AbortError):
        await service.Process(iter(()), stream)  # type: ignore[arg-type]
    assert stream.aborted is not None and stream.aborted[0] == grpc.StatusCode.INTERNAL
    assert len(stream.written) == 1  # request headers answered; the body was not
    assert observer.failures == ["request_body"] and len(observer.records) == 1
    assert in_flight(service) == {"short": 0, "long": 0} and await service.drained(0.1)
    assert "router error in request_body" in caplog.text
