from hypothesis import given
from hypothesis import strategies as st

from extproc.server.usage import json_usage, usage_counts


def test_json_usage_and_aliases():
    assert json_usage(b'{"usage":{"prompt_tokens":12,"completion_tokens":3}}') == (12, 3)
    assert usage_counts({"input_tokens": 5, "output_tokens": 2}) == (5, 2)
    assert json_usage(b'{"usage":{"prompt_tokens":"12"}}') == (None, None)
    assert json_usage(b"not json usage") == (None, None)
    assert json_usage(b"[1]") == (None, None)


@given(st.binary(max_size=2000))
def test_parsers_never_raise_on_arbitrary_bytes(data):
    json_usage(data)
    json_usage(b'{"usage":' + data)
