"""End-to-end overhead of the router in the real Envoy: prints figures, asserts nothing.

Side by side, through the same Envoy binary and the same upstream:
  none     Envoy without the ext_proc filter (the baseline);
  request  Envoy + router, request phase only (``with_response_processing`` off);
  full     Envoy + router, request + response, the router reading every response
           (``--calibration-converged-sample-rate 1``: the cost while it learns);
  default  Envoy + router as shipped, calibration converged (10 % of responses read, the rest of the
           stream closed right after the routing decision);
  noop     Envoy + a do-nothing ext_proc server on grpc.aio (same pinning, loop and options as the
           router): it answers the request headers and body with empty responses and closes the
           stream, so its cost is the floor any ext_proc router that routes by body pays here.
For 4 KB / 64 KB / 1 MB chat bodies, at fixed request rates (open loop) and at full speed (closed loop):
added P50/P99 latency against ``none``, max throughput as a ratio to ``none``, router and Envoy CPU
seconds per 1,000 requests. Then ``--server-workers N`` for N = 1 .. cores: throughput and router CPU
per request as N grows.

Upstream: a minimal aiohttp server (in this file) that reads the whole body and answers a fixed
OpenAI chat completion with ``usage`` -- no tokenizer, no model, so what is measured is Envoy + router.
Load: ``h2load`` (nghttp2-client; HTTP/2 to Envoy, paced per client with ``--rps``, per-request
latencies from ``--log-file``) when installed, else an open-loop aiohttp generator (one session,
requests launched on a fixed schedule, never waiting for earlier ones). Processes are pinned with
``taskset``: the router on its own core(s), Envoy + upstream + load generator on the rest.

    python benchmarks/e2e_overhead.py                     # everything (~6 min on 2 cores)
    python benchmarks/e2e_overhead.py --sizes 4k --rates 500 --duration 5 --no-workers-scan
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extproc.gateway.envoy_config import ROUTER_CLUSTER, SHORT_CLUSTER, EnvoyLayout, render
from extproc.server.service import EXT_PROC_SERVICE
from extproc.stack.probes import envoy_host_healthy, free_port, grpc_serving, http_ok
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import child_env, envoy_binary
from extproc.workload.corpus import corpus_text

HOST = "127.0.0.1"
SIZES = {"4k": 4 * 1024, "64k": 64 * 1024, "1m": 1024 * 1024}
VARIANTS = ("none", "request", "full", "default", "noop")
UPSTREAM_REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
    }
)


# -- the upstream ---------------------------------------------------------------------------------


def run_upstream(port: int) -> None:
    """A vLLM stand-in that costs as little as possible: read the body, answer with usage (prompt
    tokens = bytes / 4.2, so the router's calibration sees a plausible prose ratio)."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        body = UPSTREAM_REPLY.replace(b'"prompt_tokens":0', b'"prompt_tokens":%d' % max(1, int(len(raw) / 4.2)))
        return web.Response(body=body, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


# -- the do-nothing ext_proc server (the floor) -----------------------------------------------------


def run_noop_server(port: int) -> None:
    """The cheapest correct ext_proc server: no header map, no JSON, no mutation; the router's gRPC
    options and event loop, so the difference to ``default`` is what routing itself costs."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    headers_done = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
    body_done = ep.ProcessingResponse(request_body=ep.BodyResponse())

    class Noop(epg.ExternalProcessorServicer):
        async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    return
                if req.HasField("request_headers"):
                    await context.write(headers_done)
                    if req.request_headers.end_of_stream:
                        return
                else:  # the request body: nothing more to do, close as the router does
                    await context.write(body_done)
                    return

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        epg.add_ExternalProcessorServicer_to_server(Noop(), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        for name in ("", EXT_PROC_SERVICE):  # Envoy's health check names the service
            await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
        await server.wait_for_termination()

    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


# -- bodies, pinning, CPU ---------------------------------------------------------------------------


def chat_body(size: int) -> bytes:
    """A chat request of about ``size`` bytes of real English prose (routes short up to ~30 KB)."""
    text = corpus_text("prose")
    text = (text * (size // len(text.encode()) + 1))[: max(1, size - 120)]
    return orjson.dumps({"model": "bench", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})


@dataclasses.dataclass(frozen=True)
class Pinning:
    router: str  # taskset cpu list for the router, "" = unpinned
    rest: str  # Envoy, upstream, load generator

    @classmethod
    def for_machine(cls, router_cpus: int) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not shutil.which("taskset") or len(cpus) < 2:
            return cls("", "")
        router_cpus = min(router_cpus, len(cpus) - 1)
        return cls(",".join(map(str, cpus[-router_cpus:])), ",".join(map(str, cpus[:-router_cpus])))

    def prefix(self, who: str) -> list[str]:
        cpus = self.router if who == "router" else self.rest
        return ["taskset", "-c", cpus] if cpus else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants (router workers)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


# -- load generators ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    sent: int
    ok: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")[int(q * 10) - 1]


class H2Load:
    name = "h2load"

    def __init__(self, pin: list[str], tmp: Path) -> None:
        self.pin, self.tmp = pin, tmp

    def _argv(self, url: str, body: Path, clients: int, streams: int) -> list[str]:
        return [*self.pin, "h2load", "-c", str(clients), "-m", str(streams), "-d", str(body),
                "-H", "content-type: application/json", url]  # fmt: skip

    def paced(self, url: str, body: Path, rate: int, seconds: float) -> Run:
        clients = 4 if rate % 4 == 0 else 1
        n = int(rate * seconds)
        log = self.tmp / "h2load.log"
        log.unlink(missing_ok=True)
        argv = [
            *self._argv(url, body, clients, 256),
            "-n",
            str(n),
            "--rps",
            str(rate // clients),
            "--log-file",
            str(log),
        ]
        started = time.monotonic()
        subprocess.run(argv, capture_output=True, timeout=seconds * 20 + 30, check=False)
        elapsed = time.monotonic() - started
        lat = []
        for line in log.read_text().splitlines() if log.exists() else []:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                lat.append(int(cols[2]) / 1000)
        return Run(n, len(lat), elapsed, lat)

    def closed(self, url: str, body: Path, seconds: float, size: int) -> Run:
        streams = 16 if size <= 64 * 1024 else 2
        argv = [*self._argv(url, body, 4, streams), "-D", str(max(1, round(seconds))), "--warm-up-time", "1"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 4 + 30, check=False).stdout
        ok = 0
        for line in out.splitlines():
            if line.startswith("requests:"):
                ok = int(line.split("succeeded")[0].split(",")[-1].split()[0])
        return Run(ok, ok, max(1, round(seconds)), [])


class AiohttpLoad:
    """Open loop: request i starts at t0 + i/rate whatever happened to the earlier ones."""

    name = "aiohttp (open loop, one session)"

    def __init__(self, pin: list[str], tmp: Path) -> None:
        if pin:
            os.sched_setaffinity(0, {int(c) for c in pin[-1].split(",")})

    async def _go(self, url: str, data: bytes, rate: float | None, seconds: float, size: int) -> Run:
        import aiohttp

        lat: list[float] = []
        sent = 0
        headers = {"content-type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one() -> None:
                t = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as resp:
                        await resp.read()
                        if resp.status == 200:
                            lat.append((time.perf_counter() - t) * 1000)
                except aiohttp.ClientError:
                    pass

            t0 = time.perf_counter()
            if rate is not None:
                tasks = []
                n = int(rate * seconds)
                for i in range(n):
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one()))
                sent = n
                await asyncio.gather(*tasks)
                return Run(sent, len(lat), time.perf_counter() - t0, lat)

            async def loop() -> None:
                nonlocal sent
                while time.perf_counter() - t0 < seconds:
                    sent += 1
                    await one()

            await asyncio.gather(*(loop() for _ in range(32 if size <= 64 * 1024 else 4)))
            return Run(sent, len(lat), time.perf_counter() - t0, [])

    def paced(self, url: str, body: Path, rate: int, seconds: float) -> Run:
        return asyncio.run(self._go(url, body.read_bytes(), rate, seconds, 0))

    def closed(self, url: str, body: Path, seconds: float, size: int) -> Run:
        return asyncio.run(self._go(url, body.read_bytes(), None, seconds, size))


# -- the system under test ----------------------------------------------------------------------


class Bench:
    """The system under test. ``router_command`` and ``envoy_config`` are the seams a side-by-side
    run (``sidebyside.py``) replaces to measure another checkout's router with this instrument."""

    label = ""  # names this bench's processes and files apart from another's in the same run

    def __init__(self, args: argparse.Namespace, tmp: Path, upstream_port: int | None = None) -> None:
        self.args, self.tmp = args, tmp
        self.pinning = Pinning.for_machine(args.router_cpus)
        use_h2load = args.generator == "h2load" or (args.generator == "auto" and shutil.which("h2load"))
        gen_cls = H2Load if use_h2load else AiohttpLoad
        self.gen = gen_cls(self.pinning.prefix("rest"), tmp)
        self.upstream_port = upstream_port or free_port()
        self.procs: list[ManagedProcess] = []

    def router_command(self) -> tuple[list[str], dict[str, str]]:
        """How to run ``budget-router`` (argv before ``serve``) and with what environment."""
        return [sys.executable, "-m", "extproc.cli"], child_env()

    def envoy_config(self, layout: dict) -> str:
        """Envoy's YAML for these ``EnvoyLayout`` fields."""
        return render(EnvoyLayout(**layout))

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.tmp / f"{name}.log", env)
        proc.start()
        self.procs.append(proc)
        return proc

    def start_upstream(self) -> None:
        argv = [*self.pinning.prefix("rest"), sys.executable, __file__, "--upstream", str(self.upstream_port)]
        proc = self.spawn("upstream", argv, child_env())
        proc.wait_until(lambda: http_ok(f"http://{HOST}:{self.upstream_port}/health"), 30, "healthy")

    def start_router(self, variant: str, workers: int) -> tuple[ManagedProcess, int]:
        port = free_port()
        if variant == "noop":
            argv = [*self.pinning.prefix("router"), sys.executable, __file__, "--noop-server", str(port)]
            proc = self.spawn("noop-server", argv, child_env())
            proc.wait_until(lambda: grpc_serving(f"{HOST}:{port}"), 60, "SERVING")
            return proc, port
        state = self.tmp / f"state{self.label}-{variant}-{workers}.json"
        state.unlink(missing_ok=True)
        rate = "1.0"
        if variant == "default":  # converged: as after the first few hundred requests in production
            rate = "0.1"
            seed = {"updated": time.time(), "categories": {"prose": {"mean": 4.2, "dev": 0.1, "samples": 1000}}}
            state.write_bytes(orjson.dumps({"version": 1, "replicas": {"seed": seed}}))
        command, env = self.router_command()
        argv = [
            *self.pinning.prefix("router"), *command, "serve",
            "--server-listen", f"{HOST}:{port}", "--server-workers", str(workers),
            "--calibration-state-file", str(state), "--calibration-converged-sample-rate", rate,
            "--telemetry-metrics-port", "0", "--telemetry-log-level", "WARNING",
            "--spillover-enabled", "false", "--server-grace-period-s", "1",
        ]  # fmt: skip
        proc = self.spawn(f"router{self.label}-{variant}-{workers}", argv, env)
        proc.wait_until(lambda: grpc_serving(f"{HOST}:{port}"), 60, "SERVING")
        return proc, port

    def start_envoy(self, variant: str, router_port: int | None) -> tuple[ManagedProcess, str]:
        listen, admin = free_port(), free_port()
        up = ((HOST, self.upstream_port),)
        layout = dict(
            listen_host=HOST, listen_port=listen, admin_host=HOST, admin_port=admin,
            router=((HOST, router_port or 1),), short=up, long=up, otlp=None, access_log_path=None,
            ext_proc=router_port is not None, with_response_processing=variant in ("full", "default", "noop"),
            router_health_interval_s=1.0, pool_health_interval_s=1.0,
        )  # fmt: skip
        config = self.tmp / f"envoy{self.label}-{variant}.yaml"
        config.write_text(self.envoy_config(layout))
        argv = [*self.pinning.prefix("rest"), envoy_binary(), "-c", str(config), "--disable-hot-restart",
                "--concurrency", "1", "--log-level", "error"]  # fmt: skip
        proc = self.spawn(f"envoy{self.label}-{variant}", argv)
        admin_url = f"http://{HOST}:{admin}"
        wanted = [(SHORT_CLUSTER, self.upstream_port)] + ([(ROUTER_CLUSTER, router_port)] if router_port else [])
        proc.wait_until(lambda: all(envoy_host_healthy(admin_url, c, HOST, p) for c, p in wanted), 30, "healthy")
        return proc, f"http://{HOST}:{listen}/v1/chat/completions"

    def stop(self, procs: Sequence[ManagedProcess]) -> None:
        for proc in procs:
            proc.stop(5.0)

    def measure(self, variant: str, workers: int, sizes: Sequence[str], rates: Sequence[int], closed: bool) -> dict:
        """{(size, rate|'max'): (Run, router cpu s, envoy cpu s)} for one variant."""
        router = None
        router_port = None
        if variant != "none":
            router, router_port = self.start_router(variant, workers)
        envoy, url = self.start_envoy(variant, router_port)
        out: dict = {}
        try:
            for size in sizes:
                body = self.tmp / f"body-{size}.json"
                body.write_bytes(chat_body(SIZES[size]))
                self.gen.paced(url, body, 100, 1.0)  # warm-up: connections, learning, first allocations
                cases: list[int | str] = [*rates, "max"] if closed else list(rates)
                for rate in cases:
                    r0 = cpu_seconds(router.pid) if router and router.pid else 0.0
                    e0 = cpu_seconds(envoy.pid) if envoy.pid else 0.0
                    if rate == "max":
                        run = self.gen.closed(url, body, self.args.duration, SIZES[size])
                    else:
                        run = self.gen.paced(url, body, int(rate), self.args.duration)
                    r1 = cpu_seconds(router.pid) if router and router.pid else 0.0
                    e1 = cpu_seconds(envoy.pid) if envoy.pid else 0.0
                    out[(size, rate)] = (run, r1 - r0, e1 - e0)
        finally:
            self.stop([envoy] + ([router] if router else []))
        return out


# -- report -------------------------------------------------------------------------------------


def per_k(cpu: float, run: Run) -> str:
    return f"{cpu / run.ok * 1000:.2f}" if run.ok else "-"


def limit_note(run: Run, rate: int | str, router_cpu: float, envoy_cpu: float, seconds: float) -> str:
    if rate == "max":
        busiest = max(("router", router_cpu), ("envoy", envoy_cpu), key=lambda x: x[1])
        return f"{busiest[0]} {busiest[1] / seconds:.0%} of a core"
    if run.ok < 0.97 * run.sent or run.rate < 0.9 * int(rate):
        return f"overloaded: {run.rate:.0f}/s of {rate}/s done"
    return ""


def report(results: dict[str, dict], sizes: Sequence[str], rates: Sequence[int], args: argparse.Namespace) -> None:
    variants = list(results)
    base = results.get("none", {})
    print("\nLatency (ms) at fixed rates; 'added' = variant minus Envoy alone at the same size and rate")
    print(f"{'size':>5} {'rate':>5} {'variant':>8} {'P50':>7} {'P99':>7} {'+P50':>7} {'+P99':>7}"
          f" {'router s/1k':>11} {'envoy s/1k':>10}  limit")  # fmt: skip
    for size in sizes:
        for rate in rates:
            for v in variants:
                run, rcpu, ecpu = results[v][(size, rate)]
                b = base.get((size, rate))
                add50 = f"{run.pct(50) - b[0].pct(50):+.2f}" if b and v != "none" else ""
                add99 = f"{run.pct(99) - b[0].pct(99):+.2f}" if b and v != "none" else ""
                print(f"{size:>5} {rate:>5} {v:>8} {run.pct(50):7.2f} {run.pct(99):7.2f} {add50:>7} {add99:>7}"
                      f" {per_k(rcpu, run) if v != 'none' else '':>11} {per_k(ecpu, run):>10}"
                      f"  {limit_note(run, rate, rcpu, ecpu, run.seconds)}")  # fmt: skip
    if not args.no_max:
        print("\nMax throughput (closed loop), ratio to Envoy alone")
        print(f"{'size':>5} {'variant':>8} {'req/s':>8} {'ratio':>6} {'router s/1k':>11} {'envoy s/1k':>10}  limit")
        for size in sizes:
            for v in variants:
                run, rcpu, ecpu = results[v][(size, "max")]
                b = base.get((size, "max"))
                ratio = f"{run.rate / b[0].rate:.2f}" if b and b[0].rate else ""
                print(f"{size:>5} {v:>8} {run.rate:8.0f} {ratio:>6} {per_k(rcpu, run) if v != 'none' else '':>11}"
                      f" {per_k(ecpu, run):>10}  {limit_note(run, 'max', rcpu, ecpu, run.seconds)}")  # fmt: skip


def workers_scan(bench: Bench, args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"\n--server-workers N (variant full, 4k body, closed loop; router pinned to N of {cores} cores)")
    print(f"{'N':>3} {'router cpus':>11} {'req/s':>8} {'router s/1k':>11} {'envoy s/1k':>10}  limit")
    for n in range(1, cores + 1):
        bench.pinning = Pinning.for_machine(n) if n < cores else Pinning("", "")
        res = bench.measure("full", n, ["4k"], [], closed=True)[("4k", "max")]
        run, rcpu, ecpu = res
        cpus = bench.pinning.router or "all"
        print(f"{n:>3} {cpus:>11} {run.rate:8.0f} {per_k(rcpu, run):>11} {per_k(ecpu, run):>10}"
              f"  {limit_note(run, 'max', rcpu, ecpu, run.seconds)}")  # fmt: skip
    bench.pinning = Pinning.for_machine(args.router_cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--noop-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="4k,64k,1m", help="body sizes: 4k, 64k, 1m")
    ap.add_argument("--rates", default="200,500,1000", help="fixed request rates (req/s)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--router-cpus", type=int, default=1, help="cores the router is pinned to")
    ap.add_argument("--generator", choices=("auto", "h2load", "aiohttp"), default="auto")
    ap.add_argument("--no-max", action="store_true", help="skip the closed-loop max-throughput runs")
    ap.add_argument("--no-workers-scan", action="store_true")
    args = ap.parse_args()
    if args.upstream is not None:
        run_upstream(args.upstream)
        return
    if args.noop_server is not None:
        run_noop_server(args.noop_server)
        return
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [s for s in sizes if s not in SIZES] + [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown size/variant: {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="e2e-overhead-") as tmp:
        bench = Bench(args, Path(tmp))
        print(f"cores: {len(os.sched_getaffinity(0))}; router on cpus [{bench.pinning.router or 'any'}], "
              f"Envoy + upstream + load generator on [{bench.pinning.rest or 'any'}]")  # fmt: skip
        print(f"load generator: {bench.gen.name}; upstream: aiohttp (reads body, fixed JSON answer with usage); "
              f"Envoy --concurrency 1; {args.duration:g} s per point")  # fmt: skip
        try:
            bench.start_upstream()
            results = {}
            for v in variants:
                results[v] = bench.measure(v, 1, sizes, rates, closed=not args.no_max)
                print(f"  measured {v}", flush=True)
            report(results, sizes, rates, args)
            if not args.no_workers_scan:
                workers_scan(bench, args)
        finally:
            bench.stop(bench.procs)


if __name__ == "__main__":
    main()
