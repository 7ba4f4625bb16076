"""Added latency of a request the net rescues: prints figures, asserts nothing.

A retried request costs one rejected admission on the short pool plus a resend to the long pool.
Two embedded stacks (real Envoy, router, emulated pools, latency model off so only the plumbing is
measured) get the same chat bodies one at a time:
  retried  the router believes the short pool has 8,192 tokens while it has 2,048, so every body
           (~3,000 prompt tokens) is routed short, rejected with vLLM's context-length 400 and
           resent long by Envoy's net;
  direct   the router's B_short is 1 token, so the same bodies go straight to the long pool.
Prints P50/P90 client latency of each and the difference (the cost of a miss, instead of an error).

    python benchmarks/net_latency.py                  # 200 requests per side
    python benchmarks/net_latency.py --requests 50 --net composite
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from extproc.emulator.engine_args import EmulatorConfig
from extproc.gateway.envoy_config import SHORT_NETS
from extproc.stack.stack import PoolSpec, Stack, StackOptions
from extproc.workload.prompts import chat_body

MODEL = EmulatorConfig().model


async def _timings(url: str, bodies: list[bytes]) -> list[float]:
    """Seconds per request, sent sequentially."""
    out: list[float] = []
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            t0 = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}: every request must be served")
            out.append(time.perf_counter() - t0)
    return out


def _measure(name: str, flags: tuple[str, ...], net: str, bodies: list[bytes], warmup: int) -> list[float]:
    opts = StackOptions(
        run_dir=Path(tempfile.mkdtemp(prefix=f"net-latency-{name}-")),
        latency_scale=0.0,
        short=PoolSpec("short", 2048, 64),
        router_flags=flags,
        layout_overrides={"short_net": net},
    )
    with Stack(opts) as stack:
        asyncio.run(_timings(stack.url, bodies[:warmup]))
        seconds = asyncio.run(_timings(stack.url, bodies))
        time.sleep(0.3)  # Envoy flushes its access log every 100 ms
        lines = stack.access_log.path.read_bytes().splitlines()
    attempts = sorted({orjson.loads(line)["attempts"] for line in lines if line.startswith(b"{")})
    print(f"  {name:8s} Envoy attempts per request seen: {attempts}")
    return seconds


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=3000)
    parser.add_argument("--net", choices=[n for n in SHORT_NETS if n != "off"], default="priority_group")
    args = parser.parse_args(argv)
    bodies = [
        orjson.dumps(chat_body("prose", args.prompt_tokens, model=MODEL, max_tokens=8, seed=i))
        for i in range(args.requests)
    ]
    warmup = min(20, args.requests)
    believes_8k = ("--routing-short-context", "8192", "--routing-b-short", "8192")
    print(f"{args.requests} sequential chat requests, {args.prompt_tokens} prompt tokens, net={args.net}")
    retried = _measure("retried", believes_8k, args.net, bodies, warmup)
    direct = _measure("direct", ("--routing-b-short", "1"), args.net, bodies, warmup)
    for name, values in (("retried", retried), ("direct", direct)):
        print(f"  {name:8s} P50 {_pct(values, 50):7.2f} ms   P90 {_pct(values, 90):7.2f} ms")
    print(f"  added by the net: P50 {_pct(retried, 50) - _pct(direct, 50):+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
