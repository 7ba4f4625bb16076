"""BudgetRouter with ``estimator: linear``: the v1 screen settles requests far from every threshold,
near ones get the character-class model, and usage teaches the v2 model (framing included)."""

from __future__ import annotations

from pathlib import Path

from extproc.algorithm import BudgetRouter, shape_from_body
from extproc.algorithm.calibration import Observation
from extproc.algorithm.linear_estimator import EstimatorParams
from extproc.config import load_config
from extproc.router_factory import build_router

TEXT = (Path(__file__).resolve().parents[2] / "extproc" / "data" / "corpus" / "prose" / "licence-GPL-3.txt").read_text()


def _shape(router: BudgetRouter, text: str, max_tokens: int, messages: int = 1):
    msgs = [{"role": "user", "content": text[i::messages]} for i in range(messages)]
    return shape_from_body("chat", {"model": "m", "max_tokens": max_tokens, "messages": msgs}, router.categorizer)


def test_linear_is_the_default_and_ratio_still_routes_as_before():
    default, configured = BudgetRouter(), build_router(load_config())
    assert default.linear is not None and configured.linear is not None
    shape = _shape(default, TEXT[:30000], 500)
    assert default.decide(shape) == configured.decide(shape)
    ratio = build_router(load_config(overrides={"estimator": {"kind": "ratio"}}))
    assert ratio.linear is None
    assert ratio.decide(shape) == BudgetRouter(estimator=EstimatorParams(kind="ratio")).decide(shape)
    assert ratio.decide(shape)[0] == ratio.estimate(shape)  # the paper's estimate, unchanged


def test_far_requests_skip_the_features_near_ones_use_them():
    router = BudgetRouter(estimator=EstimatorParams(kind="linear"))
    far, _ = router.decide(_shape(router, TEXT[:3000], 200))
    assert far.features is None  # settled by the screen: short at half and at twice the estimate
    near, _ = router.decide(_shape(router, TEXT[:30000], 500))
    assert near.features is not None and near.prompt_tokens > 0


def test_usage_teaches_the_linear_model_including_framing():
    router = BudgetRouter(estimator=EstimatorParams(kind="linear"))
    true_ratio, framing = 4.3, 11  # the served template adds 11 tokens per message, not the default 4
    for i in range(120):
        n = 2000 + (i * 997) % 26000
        messages = 1 + i % 4
        shape = _shape(router, TEXT[i % 5000 : i % 5000 + n], 300, messages)
        est, _ = router.decide(shape)
        prompt = round(shape.text_bytes / true_ratio) + framing * messages
        learned = router.learn(shape, prompt, est)
        assert learned.observation is Observation.ACCEPTED
    shape = _shape(router, TEXT[1000:29000], 300, 3)
    est, _ = router.decide(shape)
    truth = shape.text_bytes / true_ratio + 3 * framing
    assert est.features is not None and truth <= est.prompt_tokens <= 1.08 * truth
    assert router.calibrator.state("prose").samples > 0  # the ratio calibrator keeps learning (screen, state)


def _tool_request(router: BudgetRouter, tools: int, question: str = "Which tool lists files?"):
    defs = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": TEXT[i * 200 : i * 200 + 180],
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "depth": {"type": "integer"}},
                },
            },
        }
        for i in range(tools)
    ]
    body = {"model": "m", "max_tokens": 300, "messages": [{"role": "user", "content": question}], "tools": defs}
    return shape_from_body("chat", body, router.categorizer)


def test_tool_json_is_class_counted_and_tool_heavy_requests_learn_in_their_own_bucket():
    router = BudgetRouter()
    shape = _tool_request(router, 80)  # ~25 KB of tool JSON beside a one-line question: near B_short
    assert shape.category == "prose" and router.linear_category(shape) == "structured"
    est, _ = router.decide(shape)
    assert est.features is not None
    # the JSON's own bytes are in the class counts (bytes feature, scaled per KiB), not only the text's
    assert est.features[0] * 1024 >= shape.text_bytes + 0.9 * shape.structured_bytes
    router.learn(shape, round(shape.structured_bytes / 3.1) + 40, est)
    assert router.linear is not None
    buckets = {category for _, category in router.linear.buckets()}
    assert buckets == {"structured"}  # prose's error statistics are not touched by a tool-heavy request
    text_heavy = _tool_request(router, 1, question=TEXT[:30000])
    assert router.linear_category(text_heavy) == "prose"
