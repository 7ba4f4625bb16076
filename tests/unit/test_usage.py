import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.server.usage import json_response, overflow_prompt_tokens, usage_counts

V1 = (
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
    "(8500 in the messages, 500 in the completion). Please reduce the length of the messages or completion."
)
V2 = (
    "Requested token count exceeds the model's maximum context length of 8192 tokens. You requested a total "
    "of 9000 tokens: 8600 tokens from the input messages and 400 tokens for the completion. Please reduce the "
    "number of tokens in the input messages or the completion to fit within the limit."
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"object": "error", "message": V1, "type": "BadRequestError", "param": None, "code": 400}, 8500),
        ({"error": {"message": V2, "type": "BadRequestError", "param": None, "code": 400}}, 8600),
        ({"error": {"message": "max_tokens must be at least 1", "type": "BadRequestError"}}, None),
    ],
)
def test_overflow_400_both_formats(body, expected):
    assert overflow_prompt_tokens(orjson.dumps(body)) == expected


def test_json_usage_and_aliases():
    assert json_response(b'{"usage":{"prompt_tokens":12,"completion_tokens":3}}')[:2] == (12, 3)
    assert usage_counts({"input_tokens": 5, "output_tokens": 2}) == (5, 2)
    assert json_response(b'{"usage":{"prompt_tokens":"12"}}')[:2] == (None, None)
    assert json_response(b"not json usage")[:2] == (None, None)
    assert json_response(b"[1]")[:2] == (None, None)


@given(st.binary(max_size=2000))
def test_parsers_never_raise_on_arbitrary_bytes(data):
    json_response(data)
    json_response(b'{"usage":' + data)
    overflow_prompt_tokens(b"context length" + data)
