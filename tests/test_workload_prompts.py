"""Prompts cut from the real-text corpus have exactly N tokens under the real BPE, are deterministic,
and come wrapped in valid OpenAI request bodies."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.workload.cli_args import WorkloadOptions
from extproc.workload.corpus import corpus_text, get_encoding
from extproc.workload.prompts import chat_body, completion_body, count_tokens, prompt_text, request_body
from extproc.workload.spec import build_workload
from extproc.workload.trace import TraceRequest

CJK_RE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@settings(max_examples=60, deadline=None)
@given(
    category=st.sampled_from(["prose", "code", "cjk", "mixed"]),
    n=st.integers(0, 3000),
    seed=st.integers(0, 2**32 - 1),
    encoding=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_prompt_has_exactly_n_tokens(category, n, seed, encoding):
    assert count_tokens(prompt_text(category, n, seed, encoding), encoding) == n


@pytest.mark.parametrize("category", ["prose", "code", "cjk", "mixed"])
def test_long_prompts_are_exact_and_wrap_the_corpus(category):
    text = prompt_text(category, 65_000, seed=3)  # longer than any category's corpus
    assert count_tokens(text) == 65_000


def test_prompts_are_deterministic_and_differ_by_seed():
    assert prompt_text("code", 500, seed=9) == prompt_text("code", 500, seed=9)
    assert prompt_text("code", 500, seed=9) != prompt_text("code", 500, seed=10)
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    assert [prompt_text("cjk", 40, rng_a) for _ in range(3)] == [prompt_text("cjk", 40, rng_b) for _ in range(3)]


def test_categories_carry_their_kind_of_text():
    cjk_share = lambda t: len(CJK_RE.findall(t)) / max(1, len(t))  # noqa: E731
    prose, code, cjk, mixed = (prompt_text(c, 2000, seed=1) for c in ("prose", "code", "cjk", "mixed"))
    assert prose.isascii() or cjk_share(prose) == 0
    assert cjk_share(cjk) > 0.3 and 0.02 < cjk_share(mixed) < cjk_share(cjk)
    assert sum(code.count(c) for c in "(){}=_#") / len(code) > sum(prose.count(c) for c in "(){}=_#") / len(prose)
    # the text is the corpus's own, not generated filler
    assert prose[200:260] in corpus_text("prose")


def test_chat_and_completion_bodies():
    body = chat_body(
        "prose", 120, model="m", max_tokens=64, seed=2, system="Be brief.", stream=True, include_usage=True
    )
    assert body["model"] == "m" and body["max_tokens"] == 64 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["role"] == "user" and count_tokens(body["messages"][1]["content"]) == 120
    plain = completion_body("code", 77, model="m", seed=2)
    assert count_tokens(plain["prompt"]) == 77 and "stream" not in plain and "max_tokens" not in plain


def test_request_body_from_a_workload():
    from extproc.commands.up import OPTIONS

    parser = argparse.ArgumentParser()
    OPTIONS.add_arguments(parser)
    args = parser.parse_args(
        ["--replay", "azure-conv", "--rate", "50", "--count", "5", "--category-mix", "cjk=1", "--workload-seed", "3"]
    )
    workload: WorkloadOptions = OPTIONS.from_args(args, env={}).workload
    requests = build_workload(workload.spec("azure-conv"))
    assert len(requests) == 5 and {r.category for r in requests} == {"cjk"}
    body = request_body(requests[0], model="m", seed=0, api="completions")
    assert count_tokens(body["prompt"]) == requests[0].prompt_tokens
    assert body["max_tokens"] == requests[0].output_tokens


def test_prompt_errors():
    with pytest.raises(ValueError, match="unknown prompt category"):
        prompt_text("klingon", 10)
    with pytest.raises(ValueError, match=">= 0"):
        prompt_text("prose", -1)
    with pytest.raises(ValueError, match="unknown BPE encoding"):
        get_encoding("no_such_base")
    with pytest.raises(ValueError, match="no category"):
        request_body(TraceRequest(0.0, 5, 1), model="m", seed=0)
    with pytest.raises(ValueError, match="api must be"):
        request_body(TraceRequest(0.0, 5, 1, "prose"), model="m", seed=0, api="embeddings")
