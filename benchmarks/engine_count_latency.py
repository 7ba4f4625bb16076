"""What an engine count adds to a band request's latency on loopback, and what a hung engine costs:
prints figures, asserts nothing.

A band request waits for ``EngineCounter.count`` (the router's own client: vLLM's ``POST /tokenize``
under the deadline) before its pool is chosen; every other request never waits. This measures that
wait directly, against an engine in its own process on 127.0.0.1:
  counted  chat bodies of 1,000-7,000 prompt tokens (prose, code and CJK, the sizes near an 8,192
           threshold), one at a time, as the router's event loop sends them;
  hung     the same engine stopped (SIGSTOP): how long each request waits (the deadline, then the
           cool-down answers at once), and how many waited past the deadline.
Each round is repeated; the figures are the median over rounds with the min-max spread. The engine is
the emulator (its /tokenize counts with the same tokenizer its usage does) unless ``--url`` names a
real vLLM, which is then measured instead (not stopped). The engine's own CPU per count is read from
/proc for the emulator.

    python benchmarks/engine_count_latency.py                       # 200 counts x 5 rounds
    python benchmarks/engine_count_latency.py --url http://127.0.0.1:8000 --model NAME
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
from pathlib import Path

from extproc.algorithm import Categorizer, shape_from_body
from extproc.config import EstimatorConfig
from extproc.emulator.engine_args import EmulatorConfig
from extproc.server.engine_count import EngineCounter, tokenize_payload
from extproc.stack.probes import free_port, http_ok
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import PoolSpec, StackOptions, child_env, pool_argv
from extproc.workload.prompts import chat_body

_DEFAULTS = EstimatorConfig()


def payloads(count: int, model: str) -> list[bytes]:
    out = []
    categories = ("prose", "code", "cjk")
    for i in range(count):
        tokens = 1_000 + (i * 6_007) % 6_000
        body = chat_body(categories[i % 3], tokens, model=model, max_tokens=8_192 - tokens, seed=i)
        payload = tokenize_payload(shape_from_body("chat", body, Categorizer()), body)
        assert payload is not None
        out.append(payload)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_of(
    url: str, bodies: list[bytes], timeout_s: float, gap_s: float = 0.0
) -> tuple[list[float], list[float], dict[str, int]]:
    """(waits of every request, waits of the counted ones, outcomes) of one round; band requests
    arrive ``gap_s`` apart (they are a few per cent of traffic, never back to back for long)."""
    counter = EngineCounter(lambda _pool: [url], timeout_s, _DEFAULTS.engine_count_max_in_flight)
    await counter.start()
    try:
        waits, counted = [], []
        for body in bodies:
            result = await counter.count("short", body)
            waits.append(result.seconds)
            if result.count is not None:
                counted.append(result.seconds)
            await asyncio.sleep(gap_s)  # the arrival process, not a synchronisation
        return waits, counted, dict(counter.outcomes)
    finally:
        await counter.stop()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(name: str, per_round: list[float], unit: float = 1e3, suffix: str = "ms") -> str:
    med = statistics.median(per_round)
    return f"{name} {med * unit:.2f} {suffix} (rounds {min(per_round) * unit:.2f}-{max(per_round) * unit:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", type=int, default=200, help="counts per round (default 200)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--timeout-s", type=float, default=_DEFAULTS.engine_count_timeout_s,
                    help=f"deadline per count (default {_DEFAULTS.engine_count_timeout_s})")  # fmt: skip
    ap.add_argument("--gap-ms", type=float, default=10.0, help="time between band requests (default 10)")
    ap.add_argument("--url", default="", help="a real vLLM's base URL instead of the emulator")
    ap.add_argument("--model", default=EmulatorConfig().model, help="served model name (with --url)")
    args = ap.parse_args()
    bodies = payloads(args.counts, args.model)
    engine = None
    url = args.url.rstrip("/")
    if not url:
        port = free_port()
        run_dir = Path(tempfile.mkdtemp(prefix="engine-count-"))
        argv = pool_argv(StackOptions(latency_scale=0.0), PoolSpec("short", 8_192, 64), port)
        engine = ManagedProcess("engine", argv, run_dir / "engine.log", child_env())
        engine.start()
        engine.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 60.0, "healthy")
        url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(round_of(url, bodies[:20], args.timeout_s))  # warm-up: connections, tokenizer caches
        p50s, p99s, maxes, all_p50s, all_p99s, cpu_per_count = [], [], [], [], [], []
        fallbacks: dict[str, int] = {}
        for _ in range(args.rounds):
            cpu0 = cpu_seconds(engine.pid) if engine is not None and engine.pid else 0.0
            waits, counted, outcomes = asyncio.run(round_of(url, bodies, args.timeout_s, args.gap_ms / 1e3))
            if engine is not None and engine.pid:
                cpu_per_count.append((cpu_seconds(engine.pid) - cpu0) / len(bodies))
            for outcome, n in outcomes.items():
                if outcome != "counted" and n:
                    fallbacks[outcome] = fallbacks.get(outcome, 0) + n
            p50s.append(quantile(counted, 0.5))
            p99s.append(quantile(counted, 0.99))
            maxes.append(max(counted))
            all_p50s.append(quantile(waits, 0.5))
            all_p99s.append(quantile(waits, 0.99))
        print(f"engine {'emulator' if engine is not None else url}, {args.counts} band chats of 1,000-7,000 tokens "
              f"{args.gap_ms:g} ms apart, {args.rounds} rounds, deadline {args.timeout_s * 1e3:g} ms")  # fmt: skip
        print("counted: " + ", ".join([spread("P50", p50s), spread("P99", p99s), spread("max", maxes)]))
        print("every band request (fallbacks too): " + ", ".join([spread("P50", all_p50s), spread("P99", all_p99s)])
              + f"; fallbacks {fallbacks or 0} of {len(bodies) * args.rounds}")  # fmt: skip
        if cpu_per_count:
            print("engine CPU per count: " + spread("", cpu_per_count).strip())
        if engine is not None and engine.pid:
            os.kill(engine.pid, signal.SIGSTOP)
            try:
                hung_p50, hung_max, late = [], [], 0
                for _ in range(args.rounds):
                    waits, _, _ = asyncio.run(round_of(url, bodies[:50], args.timeout_s))
                    hung_p50.append(quantile(waits, 0.5))
                    hung_max.append(max(waits))
                    late += sum(w > args.timeout_s + 0.005 for w in waits)
                print(f"hung (SIGSTOP), 50 per round: {spread('P50', hung_p50)}, {spread('max', hung_max)}; "
                      f"waits past deadline + 5 ms: {late} of {50 * args.rounds}")  # fmt: skip
            finally:
                os.kill(engine.pid, signal.SIGCONT)
    finally:
        if engine is not None:
            engine.stop(grace_s=2.0)


if __name__ == "__main__":
    main()
