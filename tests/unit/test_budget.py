import math

import pytest

from extproc.algorithm import BudgetParams, BudgetRouter, Categorizer, Outcome, RequestShape, shape_from_body
from extproc.algorithm.budget import attribute, estimate, framing_tokens

P = BudgetParams(
    default_output_tokens=1024, framing_per_request=3, framing_per_message=4, framing_per_tool=8, image_tokens=2048
)


def const(ratio):
    return lambda _category: ratio


def test_budget_arithmetic():
    s = RequestShape(endpoint="chat", category="prose", text_bytes=10_001, messages=2, output_tokens=500)
    e = estimate(s, const(4.0), P)
    assert e.prompt_tokens == math.ceil(10_001 / 4.0) + 3 + 2 * 4
    assert e.total == e.prompt_tokens + 500 and not e.output_defaulted


def test_missing_max_tokens_uses_default_reserve():
    s = RequestShape(endpoint="chat", category="prose", text_bytes=400, messages=1)
    e = estimate(s, const(4.0), P)
    assert e.output_tokens == 1024 and e.output_defaulted


def test_completions_without_max_tokens_reserve_vllms_default_of_16():
    s = RequestShape(endpoint="completions", category="prose", text_bytes=400)
    e = estimate(s, const(4.0), P)
    assert (e.output_tokens, e.output_defaulted) == (16, False)  # a real limit: not "no output limit"
    limited = estimate(RequestShape(endpoint="completions", category="prose", text_bytes=400, output_tokens=99),
                       const(4.0), P)  # fmt: skip
    assert limited.output_tokens == 99


def test_the_image_cost_is_one_setting_shared_with_the_emulator():
    from extproc.algorithm.budget import IMAGE_TOKENS
    from extproc.emulator.engine_args import EmulatorConfig

    assert BudgetParams().image_tokens == EmulatorConfig().image_tokens == IMAGE_TOKENS == 2467


def test_images_and_structured_are_added():
    s = RequestShape(
        endpoint="chat",
        category="prose",
        text_bytes=400,
        structured_bytes=300,
        images=2,
        messages=1,
        tool_items=1,
        output_tokens=10,
    )
    e = estimate(s, lambda c: 2.0 if c == "structured" else 4.0, P)
    assert e.prompt_tokens == 100 + 150 + 2 * 2048 + 3 + 4 + 8


def test_completions_have_no_chat_framing_and_token_ids_are_exact():
    s = RequestShape(endpoint="completions", category="prose", text_bytes=400)
    assert framing_tokens(s, P) == 0
    ids = RequestShape(endpoint="completions", category="prose", text_bytes=0, known_prompt_tokens=777, output_tokens=1)
    assert estimate(ids, const(4.0), P).prompt_tokens == 777


def test_attribute_subtracts_framing_and_minor_structured_part():
    s = RequestShape(endpoint="chat", category="prose", text_bytes=4000, structured_bytes=100, messages=1)
    category, nbytes, tokens = attribute(s, 1000 + 7 + 50, const(2.0), P)
    assert (category, nbytes) == ("prose", 4000)
    assert tokens == pytest.approx(1000)


def test_attribute_refuses_an_even_mix():
    s = RequestShape(endpoint="chat", category="prose", text_bytes=1000, structured_bytes=1000, messages=1)
    assert attribute(s, 600, const(4.0), P)[2] == 0.0


def test_router_learns_and_reports_signed_error():
    r = BudgetRouter()
    body = {"messages": [{"role": "user", "content": "word " * 800}], "max_tokens": 10}
    s = shape_from_body("chat", body, Categorizer())
    ticket = r.route(s)
    est = ticket.estimate
    learned = r.finish(ticket, Outcome(800 + 7))
    assert learned.observation.value == "accepted"
    assert learned.error_pct == pytest.approx((est.prompt_tokens - 807) / 807 * 100)


def test_batch_completions_route_by_the_longest_prompt_and_learn_from_all_of_them():
    """Regression: learning the summed prompt_tokens of a batch against the longest prompt's bytes
    halved the prose ratio after 200 two-prompt requests (2.82 -> 1.32) and sent fitting chats long."""
    router = BudgetRouter()
    short, long_ = "The quick brown fox jumps over the lazy dog. " * 20, "A sentence of plain prose text. " * 40
    body = {"model": "m", "prompt": [short, long_], "max_tokens": 16}
    shape = shape_from_body("completions", body, router.categorizer)
    single = shape_from_body("completions", {**body, "prompt": long_}, router.categorizer)
    assert router.estimate(shape).total == router.estimate(single).total  # the longest sequence decides
    true_ratio = 4.0
    usage = round(len(short) / true_ratio) + round(len(long_) / true_ratio)  # vLLM sums every prompt
    for _ in range(200):
        router.learn(shape, usage)
    state = router.calibrator.state(shape.category)
    assert state.mean == pytest.approx(true_ratio, rel=0.02)
