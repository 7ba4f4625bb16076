"""Router CPU per exchange with telemetry off and on: prints figures, asserts nothing.

Runs the real ``budget-router serve`` (pinned to one core when possible) and drives it over gRPC
with ``router_cpu.py``'s Envoy player, adding Envoy's trace context to the ext_proc call metadata,
so the traced runs pay for extraction, span, attributes, ``traceparent`` injection and the OTLP
export to a real receiver in this process. Every response is followed (sample rate 1.0: the span
covers the whole exchange, the worst case). Cases are interleaved and repeated; medians reported.

    python benchmarks/telemetry_overhead.py [--exchanges 3000] [--concurrency 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from router_cpu import cpu_seconds, free_port, one_exchange  # noqa: E402

from tests.test_telemetry_setup import OtlpTraceReceiver  # noqa: E402


def cases(otlp_port: int) -> dict[str, tuple[float, list[str]]]:
    """label -> (share of requests Envoy samples, router flags)."""
    traces = ["--telemetry-traces", "true", "--telemetry-otlp-endpoint", f"127.0.0.1:{otlp_port}"]
    return {
        "off": (1.0, ["--telemetry-metrics-port", "0"]),
        "metrics (Prometheus)": (1.0, ["--telemetry-metrics-port", str(free_port())]),
        "traces 10 % sampled + metrics": (0.1, [*traces, "--telemetry-metrics-port", str(free_port())]),
        "traces 100 % sampled + metrics": (1.0, [*traces, "--telemetry-metrics-port", str(free_port())]),
        "traces 100 % + metrics + JSON decision logs": (1.0, [
            *traces, "--telemetry-metrics-port", str(free_port()),
            "--telemetry-json-logs", "true", "--telemetry-log-decisions", "true",
        ]),
    }  # fmt: skip


class EnvoyTraceContext(grpc.aio.StreamStreamClientInterceptor):
    """Puts an Envoy-style ``traceparent`` in each ext_proc call's metadata, as Envoy does when it traces;
    ``sampled`` is the share Envoy samples (the router's parent-based sampler follows Envoy's flag)."""

    def __init__(self, sampled: float) -> None:
        self.sampled = sampled
        self.rng = random.Random(7)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        flags = "01" if self.rng.random() < self.sampled else "00"
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), ("traceparent", traceparent))
        return await continuation(client_call_details._replace(metadata=metadata), request_iterator)


async def load(port: int, exchanges: int, concurrency: int, pid: int, sampled: float) -> float:
    """Router CPU seconds spent on ``exchanges`` full exchanges (after a warm-up)."""
    interceptors = [EnvoyTraceContext(sampled)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
        stub = epg.ExternalProcessorStub(channel)
        for _ in range(200):
            await one_exchange(stub, True)
        todo = iter(range(exchanges))

        async def worker() -> None:
            for _ in todo:
                await one_exchange(stub, True)

        cpu0 = cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await asyncio.sleep(0.3)  # let the span batch of the last exchanges be exported and counted
        return cpu_seconds(pid) - cpu0


def measure(sampled: float, flags: list[str], exchanges: int, concurrency: int) -> float:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    port = free_port()
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*pin, sys.executable, "-m", "extproc.cli", "serve", "--server-listen", f"127.0.0.1:{port}",
                "--calibration-state-file", str(Path(tmp) / "s.json"),
                "--calibration-converged-sample-rate", "1.0", *flags]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # "listening on ..." = ready
            cpu = asyncio.run(load(port, exchanges, concurrency, proc.pid, sampled))
            if "--telemetry-metrics-port" in flags and flags[flags.index("--telemetry-metrics-port") + 1] != "0":
                url = f"http://127.0.0.1:{flags[flags.index('--telemetry-metrics-port') + 1]}/metrics"
                scraped = urllib.request.urlopen(url, timeout=5).read()
                assert b"budget_router_requests_total" in scraped, "metrics endpoint is not serving router metrics"
        finally:
            proc.terminate()
            proc.wait(30)
    return cpu / exchanges * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exchanges", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with OtlpTraceReceiver() as receiver:
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for label, (sampled, flags) in cases(receiver.port).items():
                runs.setdefault(label, []).append(measure(sampled, flags, args.exchanges, args.concurrency))
        time.sleep(0.5)
        spans = len(receiver.spans())
    base = statistics.median(runs["off"])
    print(f"Router CPU per full exchange ({args.exchanges} exchanges x {args.repeats}, {args.concurrency} streams):")
    for label, values in runs.items():
        med = statistics.median(values)
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {label:44s} {med:6.0f} µs  ({(med / base - 1) * 100:+5.1f} % vs off)   runs: {spread}")
    print(f"  spans received by the OTLP receiver: {spans}")


if __name__ == "__main__":
    main()
