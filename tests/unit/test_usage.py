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


def test_a_length_stop_is_read_from_choices_and_from_an_incomplete_responses_answer():
    from extproc.server.usage import length_stop

    assert json_response(b'{"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}],"usage":{}}')[3]
    assert not json_response(b'{"choices":[{"finish_reason":"stop"}],"usage":{}}')[3]
    incomplete = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert length_stop(incomplete) and not length_stop({**incomplete, "incomplete_details": None})
    assert not length_stop({"status": "completed"})
