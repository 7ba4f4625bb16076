"""Router CPU per routing decision on hostile bodies, this tree against an older commit side by side.

The corpus is ``extproc.workload.hostile`` (many parts, messages, tools and tool calls; nesting at
orjson's limit; huge strings and keys; batch prompts and token ids; bodies just inside each of the
router's bounds), every body within the router's request limit (``server.max_request_body_bytes``,
4 MiB) so each one is really read, plus one normal 4 KB chat request for scale.
One decision is what the router's event loop spends on a request before it can serve anything else:
``Exchange.handle`` of the request headers and the request body (limit checks, parse, shape,
estimate, decide), with the default config, in a fresh process per revision. Envoy's gRPC framing is
not included (it is built before the clock starts). A revision that raises shows the exception.

Times are the CPU time of the measuring thread (``time.thread_time``), so other processes on a
shared machine change them far less than wall time. Prints, per body and revision, the best and
worst of ``--repeats`` runs and the decision (pool / reason / detail), then the worst case over the
corpus. Asserts nothing.

    python benchmarks/hostile_bodies.py [--baseline main] [--repeats 5] [--only many_text_parts,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def measure(corpus_dir: Path, repeats: int) -> None:
    """Child mode: time every body in ``corpus_dir`` with whatever ``extproc`` is importable."""
    import extproc
    from extproc.config import load_config
    from extproc.server.exchange import Exchange, RouterRuntime
    from tests.envoy_play import request_body as body_message
    from tests.envoy_play import request_headers as headers_message

    rt = RouterRuntime.from_config(load_config(env={}, overrides={"calibration": {"state_file": ""}}))
    print(json.dumps({"extproc": str(Path(extproc.__file__).parent)}), flush=True)
    for meta in sorted(corpus_dir.glob("*.json")):
        info = json.loads(meta.read_text())
        request_headers = headers_message(info["path"])
        request_body = body_message(meta.with_suffix(".body").read_bytes())
        times, outcome = [], ""
        for _ in range(repeats):
            ex = Exchange(rt)
            t0 = time.thread_time()
            try:
                ex.handle(request_headers)
                ex.handle(request_body)
                d = ex.record.decision
                outcome = f"{d.pool} / {d.reason} / {d.detail or '-'}" if d is not None else "no decision"
            except Exception as exc:  # the old router's RecursionError, reported as the outcome
                outcome = f"raised {type(exc).__name__}"
            times.append(time.thread_time() - t0)
            ex.close()
            del ex
        print(json.dumps({"name": info["name"], "times": times, "outcome": outcome}), flush=True)


def run_revision(label: str, root: Path, corpus_dir: Path, repeats: int) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, __file__, "--measure", str(corpus_dir), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    print(f"{label}: extproc from {rows[0]['extproc']}", flush=True)
    return {r["name"]: r for r in rows[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git revision to measure side by side (e.g. main)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", help="comma-separated body names")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.repeats)
        return
    sys.path.insert(0, str(ROOT))
    from extproc.workload.hostile import CHAT, HostileBody, corpus
    from extproc.workload.prompts import chat_body

    normal = orjson.dumps(chat_body("prose", 1000, model="m", max_tokens=64, seed=1))
    over = b'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"' + b"a" * (16 << 20) + b'"}]}'
    bodies = [
        HostileBody("normal", CHAT, normal, "a normal 1,000-token chat request"),
        *corpus(),
        HostileBody("over_request_limit", CHAT, over, "16 MiB: over server.max_request_body_bytes"),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        bodies = [b for b in bodies if b.name in wanted]
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        corpus_dir = Path(tmp) / "corpus"
        corpus_dir.mkdir()
        for i, b in enumerate(bodies):
            (corpus_dir / f"{i:02d}.body").write_bytes(b.body)
            (corpus_dir / f"{i:02d}.json").write_text(json.dumps({"name": b.name, "path": b.path}))
        revisions = [("this tree", ROOT)]
        if args.baseline:
            checkout = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(checkout), args.baseline],
                           check=True)  # fmt: skip
            revisions.insert(0, (args.baseline, checkout))
        try:
            results = {label: run_revision(label, root, corpus_dir, args.repeats) for label, root in revisions}
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False)
    labels = [label for label, _ in revisions]
    print(f"\nCPU ms per decision, best / worst of {args.repeats}; decision = pool / reason / detail")
    print("| body | bytes | what | " + " | ".join(f"{label} ms | {label} decision" for label in labels) + " |")
    print("|---|---|---|" + "---|---|" * len(labels))
    worst: dict[str, tuple[float, str]] = {label: (0.0, "") for label in labels}
    for b in bodies:
        cells = []
        for label in labels:
            r = results[label][b.name]
            lo, hi = min(r["times"]) * 1000, max(r["times"]) * 1000
            cells.append(f"{lo:.2f} / {hi:.2f} | {r['outcome']}")
            if hi > worst[label][0]:
                worst[label] = (hi, b.name)
        print(f"| `{b.name}` | {len(b.body):,} | {b.what} | " + " | ".join(cells) + " |")
    for label in labels:
        ms, name = worst[label]
        print(f"worst case, {label}: {ms:.1f} CPU ms ({name})")


if __name__ == "__main__":
    main()
