"""Routing accuracy end to end through real vLLM engines: prints figures, asserts nothing.

Envoy + the router + two real vLLM servers (the CPU build: short context ``B_short``, long 16384). A
fresh router per run is warmed on real text (corpus prose, code, CJK, mixed) whose answers' ``usage``
it learns from, then sent near-boundary requests: held-out text (the other half of the corpus) whose
TRUE total (the short engine's own ``/tokenize`` count of the chat, template included, + ``max_tokens``)
lies within +-20 % of ``B_short``, sent with ``ignore_eos`` so each answer's length is exact. Each
request's fate is read from what really happened, never from an estimate:
  truncated  served by the short pool with fewer output tokens than asked (vLLM 0.32 cuts the output
             at the context: a 200 with ``finish_reason: length``; the net cannot retry it)
  rejected   sent short with a prompt over the context: the engine's 400, resent long by Envoy's net
             (the client still gets its answer; the short pool spent a refusal on it)
  wasteful   fits the short pool (true total <= B_short) but the router sent it long
Each run is one seed: the warm-up's size (20 or 40), order (kind by kind, or shuffled) and which half of
the corpus it draws from change with it. Both estimators run on the same requests: tokenizer-free
(the learned linear estimate) and engine counts (``estimator.engine_counts``: band requests are counted
by the short engine's ``/tokenize`` under the router's deadline). The engine-count wait per band
request (the decision line's ``engine_count_ms``) is the added latency, P50 / P99.

    python benchmarks/vllm_accuracy.py                       # B_short 2048, 3 seeds x 60 requests
    python benchmarks/vllm_accuracy.py --b-short 2048 8192 --seeds 5 --requests 80
    python benchmarks/vllm_accuracy.py --engine-count-timeout 1.0 --latency   # a loaded machine; + latency

The engines come from ``extproc.engines`` (installed and built once, cached in
``BUDGET_ROUTER_ENGINE_CACHE``); they start once per ``--b-short`` value and every run reuses them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks.accuracy` and `extproc` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import accuracy  # noqa: E402
from benchmarks.accuracy import Pools, corpus_halves, make_texts  # noqa: E402
from extproc.stack.probes import free_port  # noqa: E402
from extproc.stack.router_view import read_decisions  # noqa: E402
from extproc.stack.stack import CPU_ENGINE_FLEET, PoolSpec, Stack, StackOptions, wait_for  # noqa: E402

KINDS = ("prose", "code", "cjk", "mixed")
SPREAD = 0.20  # true totals within +-20 % of B_short
MAX_TOKENS = (16, 200)  # output asked for (random weights + ignore_eos: generated in full, so kept small)
CHARS_PER_TOKEN = {"prose": 4.2, "code": 3.4, "cjk": 1.1, "mixed": 2.6}
SYSTEM = "You are a helpful assistant. Answer precisely."
ESTIMATORS = ("tokenizer-free", "engine-counts")
ROUTER_FLAGS = (
    "--telemetry-json-logs", "true", "--telemetry-log-decisions", "true",
    "--calibration-converged-sample-rate", "1.0",  # every warm-up answer is learned from
)  # fmt: skip
TRUNCATIONS = "budget_router_context_truncations_total"
ENGINE_COUNTS = "budget_router_estimate_engine_counts_total"


@dataclass(frozen=True)
class Plan:
    """One near-boundary request and its truth (the engine's count)."""

    kind: str
    body: dict[str, Any]
    prompt: int
    max_tokens: int

    @property
    def total(self) -> int:
        return self.prompt + self.max_tokens


@dataclass
class Score(accuracy.Score):
    """What happened to one run's requests (the engines' answers are the truth); ``fired`` unused."""

    errors: int = 0
    spilled: int = 0  # fit, went long because the short pool was busy: capacity, not a mis-estimate
    count_mismatch: int = 0  # the answer's prompt_tokens differ from /tokenize (the truth would be wrong)
    router_truncations: float = 0.0
    engine_counts: dict[str, float] = field(default_factory=dict)
    engine_count_ms: list[float] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)  # wasteful per kind


@dataclass(frozen=True)
class Seeded:
    """What a seed varies: the warm-up's size, order and corpus half."""

    seed: int

    @property
    def warmup_count(self) -> int:
        return (20, 40)[self.seed % 2]

    @property
    def shuffled(self) -> bool:
        return (self.seed // 2) % 2 == 1

    @property
    def warm_on_extra(self) -> bool:
        return self.seed % 3 == 2

    def label(self) -> str:
        order = "shuffled" if self.shuffled else "by kind"
        return f"seed {self.seed}: warm-up {self.warmup_count} {order} on {'extra' if self.warm_on_extra else 'main'}"


def messages_of(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


async def engine_count(session: aiohttp.ClientSession, pool_url: str, model: str, text: str) -> int:
    """The engine's own prompt count of the chat (its template included): what ``usage`` will say."""
    body = {"model": model, "messages": messages_of(text), "add_generation_prompt": True}
    async with session.post(f"{pool_url}/tokenize", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["count"])


async def plan_requests(
    session: aiohttp.ClientSession, pool_url: str, model: str, pools: Pools, n: int, b_short: int, seed: int
) -> list[Plan]:
    """``n`` held-out chats whose true total lies within +-SPREAD of ``b_short``: a text sized by a rough
    chars/token, resized once by the engine's count, then ``max_tokens`` set to land on the drawn total."""
    rng = np.random.default_rng(seed)
    out: list[Plan] = []
    for i in itertools.count():
        if len(out) == n or i > 4 * n:
            break
        kind = KINDS[i % len(KINDS)]
        total = round(b_short * (1 + rng.uniform(-SPREAD, SPREAD)))
        target = total - int(rng.integers(*MAX_TOKENS))
        nchars = max(40, int(target * CHARS_PER_TOKEN[kind]))
        sub = np.random.default_rng([seed, i])
        text = make_texts(kind, nchars, pools, sub)[0][0]
        prompt = await engine_count(session, pool_url, model, text)
        text = make_texts(kind, max(40, int(nchars * target / prompt)), pools, np.random.default_rng([seed, i]))[0][0]
        prompt = await engine_count(session, pool_url, model, text)
        max_tokens = total - prompt
        if not MAX_TOKENS[0] <= max_tokens <= 2 * MAX_TOKENS[1]:
            continue
        body = {"model": model, "messages": messages_of(text), "max_tokens": max_tokens, "ignore_eos": True}
        out.append(Plan(kind, body, prompt, max_tokens))
    return out


def warmup_bodies(model: str, pools: Pools, s: Seeded) -> list[dict[str, Any]]:
    """Real text of every kind, 50-1,500 tokens (log-uniform), one output token: what the fit sees."""
    rng = np.random.default_rng(1000 + s.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(s.warmup_count)]
    kinds = list(rng.permutation(kinds)) if s.shuffled else sorted(kinds, key=KINDS.index)
    out = []
    for kind in kinds:
        tokens = float(np.exp(rng.uniform(np.log(50), np.log(1500))))
        text = make_texts(kind, max(40, int(tokens * CHARS_PER_TOKEN[kind])), pools, rng)[0][0]
        out.append({"model": model, "messages": messages_of(text), "max_tokens": 1, "ignore_eos": True})
    return out


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], tag: str) -> tuple[str, int, Any]:
    """One chat through Envoy with our own ``x-request-id`` (the access log and decision lines name it)."""
    rid = f"{tag}-{time.monotonic_ns()}"
    headers = {"x-request-id": rid, "content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=600)
    data = orjson.dumps(body)
    async with session.post(f"{url}/v1/chat/completions", data=data, headers=headers, timeout=timeout) as r:
        raw = await r.read()
        return rid, r.status, orjson.loads(raw) if r.status == 200 else raw[:300]


async def counter(session: aiohttp.ClientSession, stack: Stack, name: str) -> dict[str, float]:
    """A router counter's series (labels as Prometheus prints them) summed over the replicas."""
    out: Counter[str] = Counter()
    for url in stack.metrics_urls():
        async with session.get(url) as resp:
            page = await resp.text()
        for line in page.splitlines():
            series, _, value = line.rpartition(" ")
            if series.startswith(name + "{"):
                out[series[len(name) :]] += float(value)
    return dict(out)


def engine_count_flags(timeout_s: float | None) -> tuple[str, ...]:
    deadline = ("--estimator-engine-count-timeout-s", str(timeout_s)) if timeout_s else ()
    return ("--estimator-engine-counts", "true", *deadline)


def run_stack(engines_stack: Stack, run_dir: Path, flags: Sequence[str]) -> Stack:
    """A fresh Envoy + router in front of the running engines (live load on: engine counts find them)."""
    o = engines_stack.options
    opts = StackOptions(
        run_dir=run_dir, engines=o.engines, short=o.short, long=o.long, pool_ports=dict(engines_stack.pool_ports),
        live_load=True, metrics_port=free_port(), router_flags=(*ROUTER_FLAGS, *flags),
    )  # fmt: skip
    return Stack(opts)


async def measure(stack: Stack, warm: list[dict[str, Any]], plans: list[Plan], concurrency: int = 4) -> Score:
    """Warm the router (one request at a time, so each answer is learned before the next estimate),
    then send the near-boundary requests and score what the engines did with them."""
    b_short = stack.options.short.max_model_len
    async with aiohttp.ClientSession() as session:
        for body in warm:
            _, status, answer = await post(session, stack.url, body, "warm")
            assert status == 200, answer
        gate = asyncio.Semaphore(concurrency)

        async def send(p: Plan) -> tuple[str, int, Any]:
            async with gate:
                return await post(session, stack.url, p.body, "near")

        replies = await asyncio.gather(*(send(p) for p in plans))
        ids = [rid for rid, _, _ in replies]
        logs = [r.log_path for r in stack.routers]
        wait_for(lambda: set(ids) <= set(read_decisions(logs)), 30.0, "the router's decision lines")
        found = read_decisions(logs)
        score = Score(n=len(plans))
        for p, (rid, status, answer) in zip(plans, replies, strict=True):
            d, fits = found[rid], p.total <= b_short
            score.fits += fits
            if d.get("engine_count"):
                score.engine_count_ms.append(float(d.get("engine_count_ms", 0.0)))
            if status != 200:
                score.errors += 1
                continue
            usage = answer["usage"]
            score.count_mismatch += usage["prompt_tokens"] != p.prompt
            served = stack.access_log.pool(rid)
            if served == "short" and usage["completion_tokens"] < p.max_tokens:
                score.truncated += 1
            if d["pool"] == "short" and served == "long":
                score.rejected += 1
            if fits and d["pool"] == "long":
                spill = "spill" in str(d.get("reason", ""))
                score.spilled += spill
                score.wasteful += not spill
                score.by_kind[p.kind] += not spill
        score.router_truncations = sum((await counter(session, stack, TRUNCATIONS)).values())
        score.engine_counts = await counter(session, stack, ENGINE_COUNTS)
    return score


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):5.1f} [{min(values):.1f}-{max(values):.1f}]"


def quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else float("nan")


def report(b_short: int, scores: dict[str, list[Score]]) -> None:
    print(f"\nB_short {b_short}: median [min-max] over {len(next(iter(scores.values())))} seeds (percent)")
    print(f"{'estimator':16} {'truncated':>16} {'rejected':>16} {'wasteful/fits':>16} errors  router-cut  "
          f"answer-cut  spilled  mismatch")  # fmt: skip
    for name, runs in scores.items():
        cells = [spread([s.pct(w) for s in runs]) for w in ("truncated", "rejected", "wasteful_of_fits")]
        print(
            f"{name:16} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {sum(s.errors for s in runs):6d}  "
            f"{sum(s.router_truncations for s in runs):10.0f}  {sum(s.truncated for s in runs):10d}  "
            f"{sum(s.spilled for s in runs):7d}  {sum(s.count_mismatch for s in runs):8d}"
        )
    waits = [ms for s in scores.get("engine-counts", []) for ms in s.engine_count_ms]
    if waits:
        outcomes: Counter[str] = Counter()
        for s in scores["engine-counts"]:
            outcomes.update(s.engine_counts)
        p50, p99 = quantile(waits, 0.5), quantile(waits, 0.99)
        print(f"engine-count wait per band request: P50 {p50:.1f} ms, P99 {p99:.1f} ms (n = {len(waits)}); "
              f"outcomes {dict(outcomes)}")  # fmt: skip


async def bench(engines_stack: Stack, args: argparse.Namespace, b_short: int) -> dict[str, list[Score]]:
    main_pools, extra_pools = corpus_halves()
    scores: dict[str, list[Score]] = {name: [] for name in ESTIMATORS}
    model = engines_stack.model
    for seed in range(args.seeds):
        s = Seeded(seed)
        warm_pools, test_pools = (extra_pools, main_pools) if s.warm_on_extra else (main_pools, extra_pools)
        async with aiohttp.ClientSession() as session:
            plans = await plan_requests(
                session, engines_stack.pool_url("short"), model, test_pools, args.requests, b_short, seed
            )
        warm = warmup_bodies(model, warm_pools, s)
        for name in ESTIMATORS:
            flags = engine_count_flags(args.engine_count_timeout) if name == "engine-counts" else ()
            with run_stack(engines_stack, args.run_dir / f"b{b_short}-s{seed}-{name}", flags) as stack:
                score = await measure(stack, warm, plans)
            scores[name].append(score)
            print(f"  {s.label()} {name}: n={score.n} fits={score.fits} truncated={score.truncated} "
                  f"rejected={score.rejected} wasteful={score.wasteful} ({score.pct('wasteful_of_fits'):.1f} %) "
                  f"by kind {dict(score.by_kind)} errors={score.errors}", flush=True)  # fmt: skip
    return scores


def main(argv: list[str] | None = None) -> int:
    from extproc.engines.runtime import prepare_fleet
    from extproc.engines.settings import EngineSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--b-short", type=int, nargs="+", default=[2048], help="short contexts (= B_short) to run")
    ap.add_argument("--seeds", type=int, default=3, help="warm-up orders / text mixes per threshold")
    ap.add_argument("--requests", type=int, default=60, help="near-boundary requests per seed")
    ap.add_argument(
        "--engine-count-timeout", type=float, default=None, metavar="SECONDS",
        help="the router's engine-count deadline (default: the router's own)",
    )  # fmt: skip
    ap.add_argument(
        "--latency", action="store_true",
        help="then run benchmarks/engine_count_latency.py against the idle long engine (real vLLM /tokenize)",
    )  # fmt: skip
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp") / f"vllm-accuracy-{time.strftime('%H%M%S')}")
    args = ap.parse_args(argv)
    fleet = prepare_fleet(EngineSettings.from_env(), lambda line: print(f"[vllm] {line}", file=sys.stderr))
    long_spec = CPU_ENGINE_FLEET[1]
    for b_short in args.b_short:
        short = PoolSpec("short", b_short, CPU_ENGINE_FLEET[0].max_num_seqs)
        opts = StackOptions(run_dir=args.run_dir / f"engines-{b_short}", engines=fleet, short=short, long=long_spec)
        with Stack(opts, say=lambda line: print(f"[stack] {line}", file=sys.stderr)) as engines_stack:
            report(b_short, asyncio.run(bench(engines_stack, args, b_short)))
            if args.latency:  # the long engine: it counts prompts of any size the latency benchmark sends
                url, model = engines_stack.pool_url("long"), engines_stack.model
                latency = ROOT / "benchmarks" / "engine_count_latency.py"
                print(f"\nengine-count latency against real vLLM ({url}):", flush=True)
                argv = [sys.executable, str(latency), "--url", url, "--model", model, "--rounds", "3"]
                subprocess.run(argv, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
