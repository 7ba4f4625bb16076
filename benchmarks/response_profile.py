"""Where the router's CPU goes per exchange, phase by phase, without gRPC: prints figures, asserts nothing.

Replays exchanges through the production ``Exchange`` (built from the same flags ``serve`` reads,
telemetry as shipped) with the messages Envoy sends, serialised: each message is parsed from bytes
and each answer serialised as grpc.aio does, so protobuf work is counted; the gRPC transport is
not (``e2e_overhead.py --variants noop`` measures that floor). For each mode, thread CPU per 1,000
exchanges in each phase (request headers, request body, response headers, response body, close:
``finish`` and the observers' end), best of ``--rounds``; ``--profile`` adds cProfile's top
functions by own time, which names what costs what (the fit, the margin bookkeeping, telemetry).

    python benchmarks/response_profile.py                       # default and full, 4 KB prose
    python benchmarks/response_profile.py --modes full --profile 25
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.config import add_config_flags, config_from_args
from extproc.envoy_names import ATTEMPT_COUNT_HEADER
from extproc.server.exchange import Exchange, RouterRuntime
from extproc.server.state_store import StateStore
from extproc.stack.probes import free_port
from extproc.telemetry import TelemetryObserver, build_observer
from extproc.workload.corpus import corpus_text

MODES = {"default": "0.1", "full": "1.0"}  # converged_sample_rate: as shipped once converged / learning every answer


def _headers(pairs: dict[str, str], eos: bool) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=eos,
    )


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
        ATTEMPT_COUNT_HEADER: "1",
    }  # fmt: skip
    msgs = [
        ep.ProcessingRequest(request_headers=_headers(req, False)),
        ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)),
        ep.ProcessingRequest(response_headers=_headers(resp, False)),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=answer, end_of_stream=True)),
    ]
    return [(str(m.WhichOneof("request")), m.SerializeToString()) for m in msgs]


def runtime(rate: str, state: Path, metrics_port: int = 0) -> RouterRuntime:
    """The runtime ``serve`` builds for the e2e benchmark's router flags (converged state seeded)."""
    seed = {"updated": time.time(), "categories": {"prose": {"mean": 4.2, "dev": 0.1, "samples": 1000}}}
    state.write_bytes(orjson.dumps({"version": 1, "replicas": {"seed": seed}}))
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flags = ["--calibration-state-file", str(state), "--calibration-converged-sample-rate", rate,
             "--telemetry-metrics-port", str(metrics_port), "--telemetry-log-level", "WARNING",
             "--spillover-enabled", "false"]  # fmt: skip
    cfg = config_from_args(parser.parse_args(flags))
    observer, _ = build_observer(cfg)
    rt = RouterRuntime.from_config(cfg, observer)
    store = StateStore(cfg.calibration.state_file)
    if isinstance(observer, TelemetryObserver):
        observer.attach(rt, store)
    store.load_into(rt.router.calibrator, rt.router.linear)
    return rt


def replay(rt: RouterRuntime, msgs: list[tuple[str, bytes]], n: int) -> dict[str, float]:
    """Thread CPU seconds per phase over ``n`` exchanges; a phase Envoy would not send (the router
    closed the stream) is not sent."""
    spent: dict[str, float] = defaultdict(float)
    clock = time.thread_time
    parse = ep.ProcessingRequest.FromString
    for _ in range(n):
        ex = Exchange(rt)
        for phase, raw in msgs:
            t0 = clock()
            ex.handle(parse(raw)).SerializeToString()
            spent[phase] += clock() - t0
            if ex.done:
                break
        t0 = clock()
        ex.close()
        spent["close"] += clock() - t0
    return spent


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
    args = ap.parse_args()
    text = corpus_text("prose")
    text = (text * (args.size // len(text.encode()) + 1))[: max(1, args.size - 120)]
    body = orjson.dumps({"model": "bench", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})
    msgs = envoy_messages(body, max(1, int(len(body) / 4.2)))
    phases = ("request_headers", "request_body", "response_headers", "response_body", "close")
    print(
        f"{len(body)} B chat body; thread CPU ms per 1,000 exchanges, best of {args.rounds} rounds of {args.exchanges}"
    )
    print(f"{'mode':>8} " + " ".join(f"{p:>16}" for p in phases) + f" {'total':>8}")
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            rt = runtime(MODES[mode], Path(tmp) / "state.json", free_port() if args.metrics else 0)
            replay(rt, msgs, 500)  # warm-up: first allocations, bucket creation, margins
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                spent = replay(rt, msgs, args.exchanges)
                if not best or sum(spent.values()) < sum(best.values()):
                    best = spent
            per_k = {p: best.get(p, 0.0) / args.exchanges * 1e6 for p in phases}
            print(f"{mode:>8} " + " ".join(f"{per_k[p]:16.1f}" for p in phases) + f" {sum(per_k.values()):8.1f}")
            if args.profile:
                prof = cProfile.Profile()
                prof.runcall(replay, rt, msgs, args.exchanges)
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
