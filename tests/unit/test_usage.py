from hypothesis import given
from hypothesis import strategies as st

from extproc.server.usage import json_response, usage_counts


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
