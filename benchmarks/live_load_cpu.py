"""Live-load cost benchmark: prints figures, asserts nothing.

What the router pays for scraping 2 pools x 8 endpoints every 100 ms (160 scrapes/s): the scraper
runs in this process on the router's kind of event loop (uvloop when installed), exactly as
``budget-router serve`` runs it; the 16 endpoints are served by another process, each a page of
vLLM's size and shape (the three series among ~100 KiB of histograms), so only the router side is
measured. Prints the parse cost per page, the CPU share of one core the scraper adds over an idle
loop, CPU per scrape, and the event loop's worst stall while scraping.

    python benchmarks/live_load_cpu.py [--endpoints-per-pool 8] [--interval 0.1] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.pressure import LivePressure
from extproc.server.pool_load import PoolLoadScraper
from extproc.server.vllm_metrics import parse_engine_load

HISTOGRAMS = (
    "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
    "request_queue_time_seconds", "request_inference_time_seconds", "request_prefill_time_seconds",
    "request_decode_time_seconds", "request_prompt_tokens", "request_generation_tokens",
    "iteration_tokens_total", "request_max_num_generation_tokens", "request_params_max_tokens",
)  # fmt: skip


def vllm_page(model: str = "meta-llama/Llama-3.1-70B-Instruct") -> bytes:
    """A page shaped like vLLM's: HELP/TYPE lines, labelled histograms, the gauges in between."""
    labels = f'engine="0",model_name="{model}"'
    out = []
    for i, name in enumerate(HISTOGRAMS):
        out.append(f"# HELP vllm:{name} Histogram of {name}.\n# TYPE vllm:{name} histogram")
        for le in [f"{0.001 * 2**k:g}" for k in range(28)] + ["+Inf"]:
            out.append(f'vllm:{name}_bucket{{{labels},le="{le}"}} 1234.0')
        out.append(f"vllm:{name}_sum{{{labels}}} 5678.9\nvllm:{name}_count{{{labels}}} 1234.0")
        if i == 6:
            out.append(f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{labels}}} 37.0")
            out.append(f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{labels}}} 4.0")
            out.append(f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{labels}}} 0.71")
    for proc in ("python_gc_objects_collected_total", "process_cpu_seconds_total", "process_open_fds"):
        out.append(f"# TYPE {proc} counter\n{proc} 12.0")
    return ("\n".join(out) + "\n").encode()


def serve_pages(count: int, ports: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    page = vllm_page()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/plain")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for _ in range(count):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


async def measure(endpoints: dict[str, list[str]], interval: float, seconds: float) -> tuple[float, float, int, float]:
    """(idle CPU s, scraping CPU s, scrapes, worst loop stall s) over ``seconds`` each."""
    lags = [0.0]

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    c0 = time.process_time()
    await asyncio.sleep(seconds)
    idle = time.process_time() - c0
    live = LivePressure({SHORT: 8 * 256, LONG: 8 * 64}, max_age_s=5 * interval)
    scraper = PoolLoadScraper(live, endpoints, interval, timeout_s=0.25)
    await scraper.start()
    await asyncio.sleep(1.0)  # connections established
    lags[:] = [0.0]
    c0, n0 = time.process_time(), sum(scraper.stats.scrapes.values())
    await asyncio.sleep(seconds)
    busy = time.process_time() - c0
    scrapes = sum(scraper.stats.scrapes.values()) - n0
    failures = sum(scraper.stats.failures.values())
    await scraper.stop()
    tick.cancel()
    if failures:
        print(f"warning: {failures} failed scrapes")
    return idle, busy, scrapes, max(lags)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints-per-pool", type=int, default=8)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    page = vllm_page()
    n = 2000
    per_parse = timeit.timeit(lambda: parse_engine_load(page), number=n) / n
    print(f"page {len(page) / 1024:.0f} KiB; parse {per_parse * 1e6:.1f} µs/page -> {parse_engine_load(page)}")
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    server = ctx.Process(target=serve_pages, args=(2 * args.endpoints_per_pool, ports), daemon=True)
    server.start()
    got = [ports.get(timeout=30) for _ in range(2 * args.endpoints_per_pool)]
    k = args.endpoints_per_pool
    endpoints = {SHORT: [f"127.0.0.1:{p}" for p in got[:k]], LONG: [f"127.0.0.1:{p}" for p in got[k:]]}
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.Runner()
        loop_name = "asyncio"
    with runner:
        idle, busy, scrapes, stall = runner.run(measure(endpoints, args.interval, args.seconds))
    server.terminate()
    added = (busy - idle) / args.seconds
    rate = scrapes / args.seconds
    print(
        f"{2 * k} endpoints every {args.interval * 1000:.0f} ms on {loop_name}: {rate:.0f} scrapes/s, "
        f"router CPU +{added * 100:.1f} % of one core ({(busy - idle) / max(scrapes, 1) * 1e6:.0f} µs/scrape), "
        f"worst loop stall {stall * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
