import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.algorithm import Categorizer, ShapeError, shape_from_body
from extproc.algorithm.request_shape import completion_prompts, output_tokens

C = Categorizer()


def chat(content, **kw):
    return {"model": "m", "messages": [{"role": "user", "content": content}], **kw}


def test_text_bytes_are_utf8_bytes_of_message_text():
    s = shape_from_body("chat", chat("héllo 世界"), C)
    assert s.text_bytes == len("héllo 世界".encode())
    assert s.messages == 1 and s.endpoint == "chat"


def test_text_parts_images_and_tools_are_counted_apart():
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "x"}}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }
    s = shape_from_body("chat", body, C)
    assert s.text_bytes == len("describe")
    assert s.images == 1
    assert s.tool_items == 2
    assert s.structured_bytes > 40


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50),
        ({"max_tokens": None}, None),
        ({}, None),
        ({"max_tokens": 256.0}, 256),
        ({"max_tokens": 10**12}, 10**12),
    ],
)
def test_output_reserve_sources(body, expected):
    assert output_tokens(body) == expected


@pytest.mark.parametrize("bad", [-1, 0, 1.5, "100", True, [1], {"a": 1}])
def test_invalid_max_tokens_is_a_shape_error(bad):
    with pytest.raises(ShapeError) as exc:
        output_tokens({"max_tokens": bad})
    assert exc.value.reason == "invalid_max_tokens"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([1, 2], "not_object"),
        ({"messages": "hi"}, "bad_messages"),
        ({"messages": []}, "bad_messages"),
        ({"messages": [1]}, "bad_messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "bad_messages"),
        ({"model": "m"}, "bad_messages"),
    ],
)
def test_bad_chat_bodies(body, reason):
    with pytest.raises(ShapeError) as exc:
        shape_from_body("chat", body, C)
    assert exc.value.reason == reason


def test_completions_prompt_forms():
    assert shape_from_body("completions", {"prompt": "abc"}, C).text_bytes == 3
    batch = shape_from_body("completions", {"prompt": ["a", "abcd"]}, C)
    assert (batch.text_bytes, batch.prompts, batch.learn_text_bytes) == (4, 2, 5)
    s = shape_from_body("completions", {"prompt": [1, 2, 3]}, C)
    assert (s.known_prompt_tokens, s.prompts) == (3, 1)
    with pytest.raises(ShapeError):
        shape_from_body("completions", {"prompt": 3}, C)


def test_batched_token_id_prompts_are_counted_exactly_by_the_longest():
    s = shape_from_body("completions", {"prompt": [[1, 2, 3], [4] * 9, [5]]}, C)
    assert (s.known_prompt_tokens, s.prompts, s.text_bytes, s.texts) == (9, 3, 0, ())


@pytest.mark.parametrize(
    "prompt", [[], [[]], [[1], []], [[1], "a"], [1, [2]], [True, 1], [[1.5]], ["a", 1], None, {"a": 1}]
)
def test_prompts_vllm_would_refuse_are_bad_prompts(prompt):
    with pytest.raises(ShapeError) as exc:
        shape_from_body("completions", {"prompt": prompt}, C)
    assert exc.value.reason == "bad_prompt"


_IDS = st.lists(st.integers(0, 200_000), min_size=1, max_size=20)


@given(st.one_of(st.text(max_size=50), st.lists(st.text(max_size=20), min_size=1, max_size=5), _IDS,
                 st.lists(_IDS, min_size=1, max_size=5)))  # fmt: skip
def test_every_prompt_form_vllm_takes_is_read(prompt):
    texts, ids = completion_prompts(prompt)
    assert bool(texts) != bool(ids)
    s = shape_from_body("completions", {"prompt": prompt}, C)
    assert s.prompts == len(texts) + len(ids)
    if ids:
        assert s.known_prompt_tokens == max(ids) and s.texts == ()
    else:
        assert s.known_prompt_tokens is None and s.text_bytes == max(len(t.encode()) for t in texts)


@pytest.mark.parametrize(
    ("n", "expected"), [(None, 1), (1, 1), (4, 4), (3.0, 3), (0, 1), (-2, 1), (True, 1), ("2", 1), (2.5, 1)]
)
def test_n_completions_are_sequences_and_odd_values_count_one(n, expected):
    body = {"n": n} if n is not None else {}
    assert shape_from_body("chat", chat("x", **body), C).choices == expected
    assert shape_from_body("completions", {"prompt": "x", **body}, C).choices == expected
    assert shape_from_body("responses", {"input": "x", **body}, C).choices == 1  # the Responses API has no n


def test_stream_and_include_usage_flags():
    s = shape_from_body("chat", chat("x", stream=True, stream_options={"include_usage": True}), C)
    assert s.stream and s.client_include_usage
    s = shape_from_body("chat", chat("x", stream="yes"), C)
    assert not s.stream


# ---- the Responses API -------------------------------------------------------------------------------
def test_responses_string_input_and_instructions_are_text():
    s = shape_from_body("responses", {"instructions": "Be brief.", "input": "héllo", "max_output_tokens": 7}, C)
    assert (s.endpoint, s.text_bytes, s.messages, s.output_tokens) == ("responses", 9 + len("héllo".encode()), 2, 7)
    assert s.client_include_usage  # usage always arrives in response.completed: never inject
    assert shape_from_body("responses", {"input": "x", "max_tokens": 99}, C).output_tokens is None


def test_responses_items_text_parts_images_and_tool_items():
    body = {
        "input": [
            {"role": "user", "content": "plain"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "typed"}, {"type": "input_image", "image_url": "data:,"},
            ]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
    }  # fmt: skip
    s = shape_from_body("responses", body, C)
    assert (s.text_bytes, s.images, s.messages, s.tool_items) == (len("plaintyped"), 1, 2, 3)
    assert s.structured_bytes > len(b'"sunny"')


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"input": 5}, "bad_input"),
        ({"input": []}, "bad_input"),
        ({"input": ["x"]}, "bad_input"),
        ({"input": "x", "instructions": 3}, "bad_input"),
        ({"input": [{"role": "user", "content": 3}]}, "bad_input"),
        ({"input": "x", "max_output_tokens": -1}, "invalid_max_tokens"),
    ],
)
def test_bad_responses_bodies(body, reason):
    with pytest.raises(ShapeError) as exc:
        shape_from_body("responses", body, C)
    assert exc.value.reason == reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
response_items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "x"]),
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": st.text(max_size=20) | st.lists(
            st.fixed_dictionaries({"type": st.sampled_from(["input_text", "input_image", "input_file"])},
                                  optional={"text": st.text(max_size=10) | json_values}),
            max_size=3,
        ) | json_values,
    },
)  # fmt: skip


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "input": st.text(max_size=30) | st.lists(response_items, max_size=4) | json_values,
            "instructions": st.text(max_size=20) | json_values,
            "max_output_tokens": json_values,
            "tools": json_values,
            "stream": json_values,
        },
    )
)
def test_any_responses_body_gives_a_shape_or_a_shape_error(body):
    try:
        s = shape_from_body("responses", body, C)
    except ShapeError as exc:
        assert exc.reason in ("bad_input", "invalid_max_tokens")
        return
    assert s.text_bytes >= 0 and s.structured_bytes >= 0 and s.messages >= 0
    assert s.output_tokens is None or s.output_tokens >= 1
