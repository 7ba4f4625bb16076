"""The endpoint registry: one descriptor per API, found by path, read by every part of the router."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.algorithm import endpoints
from extproc.algorithm.budget import BudgetParams, framing_tokens
from extproc.algorithm.request_shape import shape_from_body
from extproc.config import Config
from extproc.router_factory import build_router

prefixes = st.sampled_from(["", "/v1", "/openai/v1", "/tenant-a/v1"])
queries = st.sampled_from(["", "?api-version=2024-06-01", "?x=/responses"])
apis = st.sampled_from(list(endpoints.REGISTRY.values()))


@given(prefixes, apis, queries, st.booleans())
def test_a_path_finds_its_api_whatever_the_prefix_query_or_trailing_slash(prefix, api, query, slash) -> None:
    path = prefix + api.path_suffix + ("/" if slash else "") + query
    assert endpoints.by_path("POST", path) is api


@given(st.sampled_from(["GET", "PUT", "DELETE", "OPTIONS", "post"]), apis)
def test_only_post_is_routed(method, api) -> None:
    assert endpoints.by_path(method, "/v1" + api.path_suffix) is None


def test_chat_completions_is_not_mistaken_for_completions() -> None:
    assert endpoints.by_path("POST", "/v1/chat/completions") is endpoints.CHAT
    assert endpoints.by_path("POST", "/v1/completions") is endpoints.COMPLETIONS
    assert endpoints.by_path("POST", "/v1/models") is None


def test_registry_names_are_unique_and_every_api_limits_its_output() -> None:
    assert len(set(endpoints.NAMES)) == len(endpoints.REGISTRY)
    assert all(api.output_limit_keys for api in endpoints.REGISTRY.values())


def _responses_shape():
    router = build_router(Config())
    body = {"model": "m", "instructions": "Be brief.", "input": [{"role": "user", "content": "Hello there"}]}
    return router, shape_from_body("responses", body, router.categorizer)


def test_both_estimators_count_responses_framing_as_the_chat_template_renders_it() -> None:
    """v1's framing and v2's message features must agree on which APIs are templated (they once
    disagreed for /v1/responses and fed one bucket)."""
    router, shape = _responses_shape()
    assert shape.messages == 2
    assert framing_tokens(shape, BudgetParams()) > 0
    vector, _ = router._vector(shape)
    assert vector[-3] == 2.0 and vector[-1] == 1.0  # messages, then the templated indicator


def test_responses_streams_need_no_usage_asked_for() -> None:
    _, shape = _responses_shape()
    assert shape.client_include_usage is True
