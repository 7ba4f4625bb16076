"""Where the router's CPU goes per exchange, phase by phase, without gRPC: prints figures, asserts nothing.

Replays exchanges through the production ``Exchange`` (built from the same flags ``serve`` reads,
telemetry as shipped) with the messages Envoy sends, serialised: each message is parsed from bytes
and each answer serialised as grpc.aio does, so protobuf work is counted; the gRPC transport is
not (``e2e_overhead.py --variants noop`` measures that floor). For each mode, thread CPU per 1,000
exchanges in each phase (request headers, request body, response headers, response body, close:
``finish`` and the observers' end), best of ``--rounds``; a phase the router ended the stream
before is not sent, as Envoy would not send it. ``--profile N`` adds cProfile's top functions by
own time, which names what costs what (the fit, the margin bookkeeping, telemetry).

``--against REV`` replays the same messages through an older commit's ``Exchange`` too (unpacked
with ``git archive``, run in a child process with this interpreter), alternating the two checkouts
round by round: thread CPU is far less disturbed by a busy machine than latency or throughput, so
this is the steadiest side-by-side figure of the router's own work.

    python benchmarks/response_profile.py                       # default and full, 4 KB prose
    python benchmarks/response_profile.py --modes full --profile 25
    python benchmarks/response_profile.py --against 61b8f9b --rounds 7
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

ROOT = Path(__file__).resolve().parents[1]
MODES = {"default": "0.1", "full": "1.0"}  # converged_sample_rate: as shipped once converged / learning every answer
PHASES = ("request_headers", "request_body", "response_headers", "response_body", "close")
ATTEMPTS_HEADER = "x-budget-attempts"  # extproc.envoy_names.ATTEMPT_COUNT_HEADER (older checkouts lack the module)


def _headers(pairs: dict[str, str], eos: bool) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=eos,
    )


def chat_body(size: int) -> bytes:
    from extproc.workload.corpus import corpus_text

    text = corpus_text("prose")
    text = (text * (size // len(text.encode()) + 1))[: max(1, size - 120)]
    return orjson.dumps({"model": "bench", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})


def envoy_messages(body: bytes, prompt_tokens: int) -> list[tuple[str, bytes]]:
    """The four messages of one exchange as Envoy 1.40 sends them through the shipped config, serialised."""
    req = {
        ":authority": "127.0.0.1:8080", ":path": "/v1/chat/completions", ":method": "POST", ":scheme": "http",
        "content-type": "application/json", "content-length": str(len(body)), "user-agent": "h2load nghttp2/1.52.0",
        "x-forwarded-proto": "http", "x-request-id": "0f3c6a7e-2b1d-4f44-9a43-3f1c1d0b9a11",
        "x-envoy-expected-rq-timeout-ms": "600000",
    }  # fmt: skip
    answer = orjson.dumps(
        {
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
        }
    )  # fmt: skip
    resp = {
        ":status": "200", "content-type": "application/json", "content-length": str(len(answer)),
        "date": "Tue, 24 Nov 2026 01:00:00 GMT", "server": "envoy", "x-envoy-upstream-service-time": "1",
        ATTEMPTS_HEADER: "1",
    }  # fmt: skip
    msgs = [
        ep.ProcessingRequest(request_headers=_headers(req, False)),
        ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)),
        ep.ProcessingRequest(response_headers=_headers(resp, False)),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=answer, end_of_stream=True)),
    ]
    return [(str(m.WhichOneof("request")), m.SerializeToString()) for m in msgs]


def runtime(rate: str, state: Path, metrics_port: int = 0) -> Any:
    """The runtime ``serve`` builds for the e2e benchmark's router flags (converged state seeded), from
    whichever checkout is imported: the modules moved over the project's history."""
    from extproc.config import add_config_flags, config_from_args
    from extproc.telemetry import TelemetryObserver, build_observer

    try:
        from extproc.server.exchange import RouterRuntime
        from extproc.server.state_store import StateStore
    except ImportError:  # before the server/ sub-package
        from extproc.exchange import RouterRuntime  # type: ignore[no-redef]
        from extproc.state_store import StateStore  # type: ignore[no-redef]

    seed = {"updated": time.time(), "categories": {"prose": {"mean": 4.2, "dev": 0.1, "samples": 1000}}}
    state.write_bytes(orjson.dumps({"version": 1, "replicas": {"seed": seed}}))
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flags = ["--calibration-state-file", str(state), "--calibration-converged-sample-rate", rate,
             "--telemetry-metrics-port", str(metrics_port), "--telemetry-log-level", "WARNING",
             "--spillover-enabled", "false"]  # fmt: skip
    cfg = config_from_args(parser.parse_args(flags))
    built = build_observer(cfg)
    observer = built[0] if isinstance(built, tuple) else built
    rt = RouterRuntime.from_config(cfg, observer)
    store = StateStore(cfg.calibration.state_file)
    if isinstance(observer, TelemetryObserver):
        observer.attach(rt, store)
    linear = getattr(rt.router, "linear", None)
    store.load_into(rt.router.calibrator, *([linear] if linear is not None else []))
    return rt


def _exchange_class() -> Any:
    try:
        from extproc.server.exchange import Exchange
    except ImportError:
        from extproc.exchange import Exchange  # type: ignore[no-redef]
    return Exchange


def replay(rt: Any, msgs: list[tuple[str, bytes]], n: int) -> dict[str, float]:
    """Thread CPU seconds per phase over ``n`` exchanges; a phase Envoy would not send (the router
    closed the stream, or asked for no response body) is not sent."""
    exchange = _exchange_class()
    spent: dict[str, float] = defaultdict(float)
    clock = time.thread_time
    parse = ep.ProcessingRequest.FromString
    for _ in range(n):
        ex = exchange(rt)
        for phase, raw in msgs:
            t0 = clock()
            resp = ex.handle(parse(raw))
            resp.SerializeToString()
            spent[phase] += clock() - t0
            # an older router closed after the response headers by asking for no body (mode_override)
            no_body = phase == "response_headers" and resp.HasField("mode_override")
            if ex.done or (no_body and resp.mode_override.response_body_mode == 0):
                break
        t0 = clock()
        ex.close()
        spent["close"] += clock() - t0
    return spent


def measure(mode: str, msgs: list[tuple[str, bytes]], rounds: int, n: int, metrics: bool) -> dict[str, float]:
    """Best round's µs per exchange by phase (the round least disturbed by other load)."""
    from extproc.stack.probes import free_port

    with tempfile.TemporaryDirectory() as tmp:
        rt = runtime(MODES[mode], Path(tmp) / "state.json", free_port() if metrics else 0)
        replay(rt, msgs, 500)  # warm-up: first allocations, bucket creation, margins
        best: dict[str, float] = {}
        for _ in range(rounds):
            spent = replay(rt, msgs, n)
            if not best or sum(spent.values()) < sum(best.values()):
                best = spent
    return {p: best.get(p, 0.0) / n * 1e6 for p in PHASES}


def row(label: str, per: dict[str, float]) -> str:
    return f"{label:>12} " + " ".join(f"{per[p]:16.1f}" for p in PHASES) + f" {sum(per.values()):8.1f}"


def side_by_side(args: argparse.Namespace, modes: list[str]) -> None:
    """Alternate this checkout and ``--against`` round by round, each in a child process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sidebyside import unpack  # the same unpacking as the e2e side-by-side

    with tempfile.TemporaryDirectory(prefix="response-profile-") as tmp:
        short, subject = unpack(args.against, Path(tmp) / "tree-A")
        trees = {"A": Path(tmp) / "tree-A", "B": ROOT}
        print(f"A = {short} ({subject}); B = working tree ({ROOT})")
        print(f"{len(chat_body(args.size))} B chat body; µs per exchange (thread CPU), each checkout's best of "
              f"{args.rounds} rounds of {args.exchanges}, checkouts alternated")  # fmt: skip
        for mode in modes:
            runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for rep in range(args.rounds):
                for tree in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                    argv = [sys.executable, "-P", __file__, "--child", "--modes", mode, "--rounds", "1",
                            "--exchanges", str(args.exchanges), "--size", str(args.size)]  # fmt: skip
                    env = dict(os.environ, PYTHONPATH=str(trees[tree]))
                    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
                    runs[tree].append(json.loads(out.splitlines()[-1]))
            print(f"\n{mode}: {'':>5}" + " ".join(f"{p:>16}" for p in PHASES) + f" {'total':>8}")
            best = {t: min(r, key=lambda d: sum(d.values())) for t, r in runs.items()}
            for tree in ("A", "B"):
                print(row(f"{tree} best", best[tree]))
            ratios = [sum(b.values()) / sum(a.values()) for a, b in zip(runs["A"], runs["B"], strict=True)]
            print(f"  B/A of the totals, round by round: median {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}]")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--exchanges", type=int, default=3000, help="exchanges per round (default 3000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; the best is printed (default 5)")
    ap.add_argument("--size", type=int, default=4096, help="request body bytes of prose (default 4096)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also print cProfile's top N functions")
    ap.add_argument(
        "--metrics", action="store_true", help="Prometheus metrics on (as shipped; the e2e bench has them off)"
    )
    ap.add_argument("--against", metavar="REV", help="also replay through this older commit, alternated")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    if not args.child:
        sys.path.insert(0, str(ROOT))  # this checkout (a child gets its checkout from PYTHONPATH)
    if args.against:
        side_by_side(args, modes)
        return
    body = chat_body(args.size)
    msgs = envoy_messages(body, max(1, int(len(body) / 4.2)))
    if args.child:
        print(json.dumps(measure(modes[0], msgs, args.rounds, args.exchanges, args.metrics)))
        return
    print(f"{len(body)} B chat body; µs per exchange (thread CPU), best of {args.rounds} rounds of {args.exchanges}")
    print(f"{'mode':>12} " + " ".join(f"{p:>16}" for p in PHASES) + f" {'total':>8}")
    for mode in modes:
        print(row(mode, measure(mode, msgs, args.rounds, args.exchanges, args.metrics)))
        if args.profile:
            with tempfile.TemporaryDirectory() as tmp:
                rt = runtime(MODES[mode], Path(tmp) / "state.json")
                replay(rt, msgs, 500)
                prof = cProfile.Profile()
                prof.runcall(replay, rt, msgs, args.exchanges)
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
