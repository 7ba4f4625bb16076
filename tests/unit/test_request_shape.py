import pytest

from extproc.algorithm import Categorizer, ShapeError, shape_from_body
from extproc.algorithm.request_shape import output_tokens

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
    assert shape_from_body("completions", {"prompt": ["a", "abcd"]}, C).text_bytes == 4
    s = shape_from_body("completions", {"prompt": [1, 2, 3]}, C)
    assert s.known_prompt_tokens == 3
    with pytest.raises(ShapeError):
        shape_from_body("completions", {"prompt": 3}, C)


def test_stream_and_include_usage_flags():
    s = shape_from_body("chat", chat("x", stream=True, stream_options={"include_usage": True}), C)
    assert s.stream and s.client_include_usage
    s = shape_from_body("chat", chat("x", stream="yes"), C)
    assert not s.stream
