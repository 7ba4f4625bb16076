"""An older commit's router against the working tree's, side by side in one run: prints figures, asserts nothing.

A speed regression is only visible against a baseline measured on the same machine at the same
time: on a shared machine absolute figures drift by tens of percent between runs, so figures from
another day prove nothing. This runs ``e2e_overhead.py``'s measurement (the same Envoy binary, the
same upstream, the same load generator and pinning: this checkout's instrument) for two routers:

  A  the named commit (``--against``, default ``main``), unpacked with ``git archive`` into a
     temporary folder and run from there with this interpreter (its own ``extproc`` and its own
     Envoy configuration, so what it shipped is what is measured);
  B  the working tree as it is on disk, uncommitted changes included.

Each repeat measures every variant for A and B back to back, alternating which goes first, so
drift in the machine's load falls on both. Envoy alone (``none``) and, with ``--variants ...,noop``,
a do-nothing ext_proc server are measured once per repeat, and every ratio is taken against the
``none`` of its own repeat. Printed: per repeat, then the median and [min-max] over repeats of
added P50/P99, router CPU seconds per 1,000 exchanges (per variant, and the response phase as
``full - request`` and ``default - request``), max throughput as a ratio to Envoy alone, and B/A.

    python benchmarks/sidebyside.py --against 61b8f9b --sizes 4k --rates 500 --duration 5 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_overhead as e2e

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("none", "noop")  # tree-independent variants: measured once per repeat

# Renders an EnvoyLayout inside the other checkout: the layout's fields and module moved over the
# project's history, so fields the older layout lacks are dropped (and named on stderr).
_RENDER = """
import dataclasses, json, sys
try:
    from extproc.gateway.envoy_config import EnvoyLayout, render
except ImportError:
    from extproc.envoy_config import EnvoyLayout, render
wanted = json.load(sys.stdin)
known = {f.name for f in dataclasses.fields(EnvoyLayout)}
dropped = sorted(set(wanted) - known)
if dropped:
    print("older EnvoyLayout lacks: " + ", ".join(dropped), file=sys.stderr)
tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, list) else v
sys.stdout.write(render(EnvoyLayout(**{k: tuples(v) for k, v in wanted.items() if k in known})))
"""


class TreeBench(e2e.Bench):
    """The same instrument pointed at another checkout's router and Envoy configuration."""

    def __init__(self, args: argparse.Namespace, tmp: Path, tree: Path, upstream_port: int) -> None:
        super().__init__(args, tmp, upstream_port)
        self.tree = tree
        self.label = "-A"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.tree), PYTHONUNBUFFERED="1")
        return env

    def router_command(self) -> tuple[list[str], dict[str, str]]:
        # -P: no script folder or cwd on sys.path, so PYTHONPATH's checkout wins over this one
        return [sys.executable, "-P", "-m", "extproc.cli"], self._env()

    def envoy_config(self, layout: dict) -> str:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _RENDER],
            input=json.dumps(layout),
            capture_output=True,
            text=True,
            env=self._env(),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rendering the older checkout's Envoy config failed:\n{done.stderr}")
        return done.stdout


def unpack(rev: str, dest: Path) -> tuple[str, str]:
    """The commit ``rev`` as files under ``dest`` (``git archive``: leaves the repository's worktree
    list alone and needs no cleanup if the run is killed). Returns (short hash, subject)."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h%x00%s", f"{rev}^{{commit}}", "--"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit(f"sidebyside: --against {rev!r} is not a commit of {ROOT}: {found.stderr.strip()}")
    short, subject = found.stdout.strip().split("\0", 1)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", short], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"sidebyside: git archive {short} failed")
    if not (dest / "extproc" / "cli.py").exists():
        raise SystemExit(f"sidebyside: {short} has no extproc/cli.py: too old to run as a router")
    return short, subject


# -- figures -------------------------------------------------------------------------------------

Point = tuple[e2e.Run, float, float]  # (run, router cpu s, envoy cpu s), as Bench.measure gives
Results = dict[str, dict[str, list[dict]]]  # tree -> variant -> one measure() result per repeat


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    variant: str
    get: Callable[[int], float | None]  # repeat index -> value (None: not measured)
    lower_is_better: bool = True


def per_k(point: Point) -> float | None:
    run, rcpu, _ = point
    return rcpu / run.ok * 1000 if run.ok else None


def metrics_for(results: Results, tree: str, size: str, rates: Sequence[int], args: argparse.Namespace) -> list[Metric]:
    """Every figure the summary prints for one tree, as functions of the repeat."""
    by_variant = results[tree]

    def point(variant: str, rep: int, rate: int | str) -> Point | None:
        runs = results["shared"].get(variant) if variant in SHARED else by_variant.get(variant)
        return runs[rep].get((size, rate)) if runs else None

    def added(variant: str, rate: int, q: float) -> Callable[[int], float | None]:
        def get(rep: int) -> float | None:
            p, base = point(variant, rep, rate), point("none", rep, rate)
            return None if p is None or base is None else p[0].pct(q) - base[0].pct(q)

        return get

    def cpu(variant: str, rate: int | str, minus: str | None = None) -> Callable[[int], float | None]:
        def get(rep: int) -> float | None:
            p = point(variant, rep, rate)
            value = per_k(p) if p is not None else None
            if minus is not None and value is not None:
                q = point(minus, rep, rate)
                sub = per_k(q) if q is not None else None
                return None if sub is None else value - sub
            return value

        return get

    def ratio(variant: str) -> Callable[[int], float | None]:
        def get(rep: int) -> float | None:
            p, base = point(variant, rep, "max"), point("none", rep, "max")
            return None if p is None or base is None or not base[0].rate else p[0].rate / base[0].rate

        return get

    out: list[Metric] = []
    variants = [v for v in args.variant_list if v != "none"]
    for v in variants:
        for rate in rates:
            out.append(Metric(f"+P50 ms @{rate}/s", v, added(v, rate, 50)))
            out.append(Metric(f"+P99 ms @{rate}/s", v, added(v, rate, 99)))
            out.append(Metric(f"router s/1k @{rate}/s", v, cpu(v, rate)))
        if not args.no_max:
            out.append(Metric("max ratio to none", v, ratio(v), lower_is_better=False))
            out.append(Metric("router s/1k @max", v, cpu(v, "max")))
    for v in ("full", "default"):
        if v in variants and "request" in variants:
            for rate in rates:
                out.append(Metric(f"response phase s/1k @{rate}/s", f"{v}-request", cpu(v, rate, "request")))
    return out


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def report(results: Results, args: argparse.Namespace, names: dict[str, str]) -> dict:
    reps = range(args.repeats)
    summary: dict = {}
    for size in args.size_list:
        print(
            f"\n{size} bodies: median [min-max] over {args.repeats} repeats; B/A per repeat, then its median [min-max]"
        )
        print(f"{'variant':>16} {'figure':>28} {'A ' + names['A']:>24} {'B ' + names['B']:>24} {'B/A':>22}")
        per_tree = {t: metrics_for(results, t, size, args.rate_list, args) for t in ("A", "B")}
        for ma, mb in zip(per_tree["A"], per_tree["B"], strict=True):
            shared = ma.variant in SHARED
            va = [v for v in map(ma.get, reps) if v is not None]
            vb = [v for v in map(mb.get, reps) if v is not None]
            pairs = [(a, b) for a, b in zip(map(ma.get, reps), map(mb.get, reps), strict=True) if a and b]
            # a difference (added latency, a phase as one variant minus another) has no meaningful ratio
            difference = ma.label.startswith("+P") or "-" in ma.variant
            ratios = [b / a for a, b in pairs if not shared and not difference and a > 0 and b > 0]
            print(f"{ma.variant:>16} {ma.label:>28} {spread(va):>24} {'(same)' if shared else spread(vb):>24}"
                  f" {spread(ratios):>22}")  # fmt: skip
            summary[f"{size} {ma.variant} {ma.label}"] = {"A": va, "B": vb, "B/A": ratios}
    return summary


def per_repeat_line(rep: int, tree: str, variant: str, out: dict, args: argparse.Namespace) -> str:
    parts = []
    for (size, rate), p in sorted(out.items(), key=lambda kv: str(kv[0])):
        run = p[0]
        k = per_k(p)
        cpu = f"{k:.2f}" if k is not None else "-"
        if rate == "max":
            parts.append(f"{size} max {run.rate:.0f}/s router {cpu} s/1k")
        else:
            parts.append(f"{size}@{rate} P50 {run.pct(50):.2f} P99 {run.pct(99):.2f} ms router {cpu} s/1k")
    return f"  repeat {rep + 1} {tree:>6} {variant:>8}: " + "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="main", metavar="REV", help="the older commit (A); default: main")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--sizes", default="4k", help="body sizes: 4k, 64k, 1m (default 4k)")
    ap.add_argument("--rates", default="500", help="fixed request rates, req/s (default 500)")
    ap.add_argument("--variants", default="none,request,full,default",
                    help=f"subset of {','.join(e2e.VARIANTS)} (none is always measured)")  # fmt: skip
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    ap.add_argument("--router-cpus", type=int, default=1, help="cores the router is pinned to")
    ap.add_argument("--generator", choices=("auto", "h2load", "aiohttp"), default="auto")
    ap.add_argument("--no-max", action="store_true", help="skip the closed-loop max-throughput runs")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON here")
    args = ap.parse_args()
    args.size_list = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    args.variant_list = ["none", *(v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "none")]
    bad = [s for s in args.size_list if s not in e2e.SIZES] + [v for v in args.variant_list if v not in e2e.VARIANTS]
    if bad or args.repeats < 1:
        ap.error(f"unknown size/variant: {', '.join(bad)}" if bad else "--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="sidebyside-") as tmp_name:
        tmp = Path(tmp_name)
        short, subject = unpack(args.against, tmp / "tree-A")
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
        names = {"A": short, "B": f"{head}{'+wt' if dirty else ''}"}
        b = e2e.Bench(args, tmp)
        a = TreeBench(args, tmp, tmp / "tree-A", b.upstream_port)
        print(f"A = {short} ({subject})\nB = working tree {names['B']} ({ROOT})")
        print(f"cores: {len(os.sched_getaffinity(0))}; router on cpus [{b.pinning.router or 'any'}], Envoy + "
              f"upstream + load on [{b.pinning.rest or 'any'}]; load: {b.gen.name}; {args.duration:g} s per point; "
              f"{args.repeats} repeats, A and B interleaved")  # fmt: skip
        print("Absolute figures drift with the machine's other load: compare A and B of the same repeat.")
        results: Results = {"shared": {}, "A": {}, "B": {}}
        benches = {"A": a, "B": b}
        try:
            b.start_upstream()
            for rep in range(args.repeats):
                order = ("A", "B") if rep % 2 == 0 else ("B", "A")
                for variant in args.variant_list:
                    trees = ("shared",) if variant in SHARED else order
                    for tree in trees:
                        bench = benches["B" if tree == "shared" else tree]
                        out = bench.measure(variant, 1, args.size_list, args.rate_list, closed=not args.no_max)
                        results[tree].setdefault(variant, []).append(out)
                        print(per_repeat_line(rep, tree, variant, out, args), flush=True)
            summary = report(results, args, names)
        finally:
            b.stop(b.procs + a.procs)
    if args.json:
        args.json.write_text(json.dumps({"A": short, "B": names["B"], "figures": summary}, indent=1))


if __name__ == "__main__":
    main()
