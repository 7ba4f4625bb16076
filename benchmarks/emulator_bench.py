"""Figures for the vLLM emulator: token counting speed, streaming overhead, and pool capacity.

    python benchmarks/emulator_bench.py [--streams 1000] [--seconds 5]

1. Counting a 1 MB prompt (cold and cached) with the windowed BPE.
2. N concurrent streaming chat requests against one emulator at latency scale 0 (pure overhead).
3. Modelled capacity: the same closed-loop load against max_num_seqs 16 and 128 at latency scale 1,
   showing that more slots (and the batch-dependent step time) serve more requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import orjson

from extproc.emulator import EmulatorConfig, start_emulator
from extproc.emulator.tokens import ENCODINGS, TokenCounter


def bench_counting() -> None:
    para = "The router estimates tokens, then routes.\n def f(x):\n    return x * 2\n 长文本测试。\n"
    text = (para * (1_000_000 // len(para) + 1))[:1_000_000]
    for encoding in ENCODINGS:  # cl100k/o200k: bpe_openai in windows; llama3/qwen3: quicktok-v1 in one call
        counter = TokenCounter(encoding)
        t0 = time.perf_counter()
        n = counter.count(text)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        counter.count(text)
        warm = time.perf_counter() - t0
        print(f"count 1 MB prompt, {encoding}: {n} tokens, cold {cold * 1000:.1f} ms, cached {warm * 1e6:.1f} us")


async def _stream(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with http.post(url, data=body) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return time.perf_counter() - t0


async def bench_streams(n: int) -> None:
    emu = await start_emulator(EmulatorConfig(port=0, latency_scale=0, max_num_seqs=256, max_model_len=8192))
    body = orjson.dumps({"messages": [{"role": "user", "content": "hello " * 200}], "max_tokens": 32,
                         "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    try:
        conn = aiohttp.TCPConnector(limit=n)
        async with aiohttp.ClientSession(connector=conn) as http:
            t0 = time.perf_counter()
            lat = await asyncio.gather(*(_stream(http, f"{emu.url}/v1/chat/completions", body) for _ in range(n)))
            wall = time.perf_counter() - t0
    finally:
        await emu.close()
    lat.sort()
    print(
        f"{n} concurrent streams x 32 tokens, latency scale 0: {wall:.2f} s, {n / wall:.0f} req/s, "
        f"{n * 32 / wall:.0f} tokens/s, p50 {lat[n // 2] * 1000:.0f} ms, p99 {lat[int(n * 0.99)] * 1000:.0f} ms"
    )


async def bench_capacity(slots: int, clients: int, seconds: float) -> None:
    cfg = EmulatorConfig(port=0, latency_scale=1.0, max_num_seqs=slots, max_model_len=8192)
    emu = await start_emulator(cfg)
    body = orjson.dumps({"messages": [{"role": "user", "content": "word " * 100}], "max_tokens": 128})
    done: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            done.append(await _stream(http, f"{emu.url}/v1/chat/completions", body))

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
            await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    finally:
        await emu.close()
    print(
        f"max_num_seqs {slots:4d}, {clients} clients, ~100-token prompts, 128 output tokens: "
        f"{len(done) / wall:6.1f} req/s, mean latency {statistics.mean(done):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    bench_counting()
    asyncio.run(bench_streams(args.streams))
    for slots in (16, 128):
        asyncio.run(bench_capacity(slots, args.clients, args.seconds))


if __name__ == "__main__":
    main()
