"""What a hung router costs clients, old timeouts against new, side by side in one run.

Real Envoy, the router and two emulated pools (``budget-router up``'s stack, latency model off, not
supervised, so the hang lasts as long as asked); open-loop short chat requests (half of them
streaming) at ``--rate``; the router is SIGSTOPped ``--hang-at`` seconds in for ``--hang`` seconds.
The variants are the shipped Envoy router settings before and after issue 25:

* ``old``: ``message_timeout`` 30 s, router health check every 2 s with a 2 s timeout;
* ``new``: ``MESSAGE_TIMEOUT_S`` (0.5 s), health check every ``ROUTER_HEALTH_INTERVAL_S`` (1 s) with a
  ``ROUTER_HEALTH_TIMEOUT_S`` (1 s) timeout.

Prints p50 / p99 / max latency and failures for all requests and for those sent during the hang,
per repeat (the variants alternate, so both see the same machine load). Asserts nothing.

    python benchmarks/router_hang.py [--rate 50] [--hang 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extproc.gateway.envoy_config import MESSAGE_TIMEOUT_S, ROUTER_HEALTH_INTERVAL_S, ROUTER_HEALTH_TIMEOUT_S
from extproc.stack.fault_load import open_loop, summarize
from extproc.stack.replay import MODEL
from extproc.stack.stack import Stack, StackOptions
from extproc.workload.prompts import chat_body

VARIANTS = {
    "old": {"message_timeout_s": 30.0, "router_health_interval_s": 2.0, "router_health_timeout_s": 2.0},
    "new": {
        "message_timeout_s": MESSAGE_TIMEOUT_S,
        "router_health_interval_s": ROUTER_HEALTH_INTERVAL_S,
        "router_health_timeout_s": ROUTER_HEALTH_TIMEOUT_S,
    },
}


def run_one(variant: str, args: argparse.Namespace, bodies: list[bytes]) -> tuple[str, str]:
    opts = StackOptions(
        run_dir=Path(tempfile.mkdtemp(prefix=f"router-hang-{variant}-")),
        latency_scale=0.0,
        layout_overrides=dict(VARIANTS[variant]),
    )
    duration = args.hang_at + args.hang + args.after
    with Stack(opts, say=lambda line: None) as stack:
        pid = stack.routers[0].pid
        assert pid is not None
        actions = [
            (args.hang_at, lambda: os.kill(pid, signal.SIGSTOP)),
            (args.hang_at + args.hang, lambda: os.kill(pid, signal.SIGCONT)),
        ]
        try:
            load = open_loop(stack.url, lambda i: bodies[i % len(bodies)], args.rate, duration, actions, 60.0)
            results = asyncio.run(load)
        finally:
            os.kill(pid, signal.SIGCONT)
    during = [r for r in results if args.hang_at <= r.sent_s < args.hang_at + args.hang]
    return summarize(results).line(), summarize(during).line()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--hang-at", type=float, default=2.0, help="seconds into the run the router stops")
    parser.add_argument("--hang", type=float, default=10.0, help="seconds the router stays stopped")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of load after SIGCONT")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="old,new", help="comma-separated: old, new")
    args = parser.parse_args()
    docs = [chat_body("prose", 300, model=MODEL, max_tokens=12, seed=i, stream=i % 2 == 0) for i in range(200)]
    bodies = [orjson.dumps(doc) for doc in docs]
    print(f"router SIGSTOPped {args.hang:g} s at {args.hang_at:g} s, {args.rate:g} req/s open loop")
    print("variant | repeat | message_timeout | all requests | sent during the hang")
    for repeat in range(1, args.repeats + 1):
        for variant in args.variants.split(","):
            total, during = run_one(variant, args, bodies)
            timeout = VARIANTS[variant]["message_timeout_s"]
            print(f"{variant} | {repeat} | {timeout:g} s | {total} | {during}", flush=True)


if __name__ == "__main__":
    main()
