"""The browser protocol codec: parsing, validation errors with codes, schemas."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signaling.errors import MessageError
from signaling.protocol import (
    Candidate,
    ClientEvent,
    Hello,
    Publish,
    encode,
    error,
    parse_client_message,
    schemas,
)


def test_a_valid_message_becomes_its_dataclass() -> None:
    """A valid client message parses into its frozen dataclass, empty and null fields kept."""
    msg = parse_client_message('{"type":"publish","id":7,"sdp":"v=0"}')
    assert msg == Publish(id=7, sdp="v=0")
    cand = parse_client_message(json.dumps({"type": "candidate", "target": "publish",
                                            "candidate": "", "sdpMid": None}))
    assert isinstance(cand, Candidate) and cand.candidate == "" and cand.sdpMid is None
    assert parse_client_message('{"type":"clientEvent","event":"ice","data":{"s":1}}') == \
        ClientEvent(event="ice", data={"s": 1})


@pytest.mark.parametrize(("text", "code", "names"), [
    ("{not json", "message.malformed", ""),
    ("[1,2]", "message.malformed", ""),
    ('{"type":"teleport"}', "message.unknown_type", "teleport"),
    ('{"sdp":"x"}', "message.unknown_type", ""),
    ('{"type":"publish"}', "message.invalid", "publish.sdp"),
    ('{"type":"publish","sdp":5}', "message.invalid", "publish.sdp"),
    ('{"type":"publish","sdp":"x","extra":1}', "message.invalid", "extra"),
    ('{"type":"hello","token":"t","id":[1]}', "message.invalid", "hello.id"),
    ('{"type":"candidate","target":"publish","candidate":"x","sdpMLineIndex":true}',
     "message.invalid", "sdpMLineIndex"),
])
def test_bad_messages_get_a_specific_code_naming_the_field(text: str, code: str,
                                                           names: str) -> None:
    """A bad message is refused with a specific code whose message names the offending field."""
    with pytest.raises(MessageError) as info:
        parse_client_message(text)
    assert info.value.code == code
    assert names in info.value.message


def test_an_oversized_message_is_refused_before_parsing() -> None:
    """A message over the size limit is refused `message.too_large` before it is parsed."""
    with pytest.raises(MessageError) as info:
        parse_client_message('{"type":"ping"}' + " " * 100, max_size=50)
    assert info.value.code == "message.too_large"


def test_replies_name_the_request_and_events_do_not() -> None:
    """Replies carry the request's id as `re`, events carry none, errors carry code and message."""
    assert json.loads(encode("answer", re=3, sdp="v=0")) == {"type": "answer", "re": 3,
                                                             "sdp": "v=0"}
    assert json.loads(encode("callLive")) == {"type": "callLive"}
    assert json.loads(error("auth.expired", "token expired", re="a")) == {
        "type": "error", "re": "a", "code": "auth.expired", "message": "token expired"}


def test_schemas_accept_what_the_parser_accepts() -> None:
    """There is a JSON schema per client message, and the schemas agree with the parser."""
    all_schemas = schemas()
    assert set(all_schemas) == {"hello", "join", "publish", "subscribe", "candidate", "leave",
                                "end", "clientEvent", "ring", "accept", "decline", "cancel",
                                "ping"}
    sample = {"type": "hello", "id": 1, "token": "abc"}
    jsonschema.validate(sample, all_schemas["hello"])
    assert parse_client_message(json.dumps(sample)) == Hello(id=1, token="abc")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "hello"}, all_schemas["hello"])


@given(st.text(max_size=300))
def test_arbitrary_text_never_escapes_as_anything_but_a_message_error(text: str) -> None:
    """Any text either parses or raises a MessageError with a `message.` code, nothing else."""
    try:
        parse_client_message(text)
    except MessageError as exc:
        assert exc.code.startswith("message.")


@given(st.dictionaries(st.sampled_from(["type", "id", "sdp", "token", "target", "candidate",
                                        "participant", "event", "data", "x"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                 st.sampled_from(["publish", "hello", "candidate", "join"]),
                                 st.lists(st.integers(), max_size=2),
                                 st.dictionaries(st.text(max_size=3), st.integers(),
                                                 max_size=2))))
def test_arbitrary_objects_parse_or_fail_with_a_code(obj: dict[str, object]) -> None:
    """Any JSON object either parses or fails with one of the three message error codes."""
    try:
        parse_client_message(json.dumps(obj))
    except MessageError as exc:
        assert exc.code in ("message.invalid", "message.unknown_type", "message.malformed")


@pytest.mark.parametrize(("text", "rid"), [
    ("[" * 2000 + "]" * 2000, None),  # beyond Python's own decoder: no id to name
    ('{"type":"ping","id":5,"x":' + "[" * 16 + "]" * 16 + "}", 5),
    ('{"type":"clientEvent","id":"a","event":"e","data":{"k":' + "{\"k\":" * 15 + "1"
     + "}" * 16 + "}", "a"),
    ('{"type":"ping","id":6,"x":NaN}', 6),
    ('{"type":"ping","id":7,"x":[-Infinity]}', 7),
    ('{"type":"ping","id":8,"x":1e309}', 8),
    ('{"type":"ping","id":"\\ud800"}', None),
    ('{"type":"ping","id":9,"\\udfff":1}', 9),
    ('{"type":"ping","id":' + str(2**53) + "}", None),
    ('{"type":"ping","id":"' + "i" * 129 + '"}', None),
    ('{"type":"clientEvent","id":10,"event":"e","data":{"p":"' + "x" * 8200 + '"}}', 10),
])
def test_deep_non_finite_unencodable_or_oversized_input_is_message_invalid(
    text: str, rid: object
) -> None:
    """Nesting beyond 16, NaN/Infinity, lone surrogates, unsafe ids and big client events
    are refused with message.invalid, naming the id when it is itself fine."""
    with pytest.raises(MessageError) as info:
        parse_client_message(text)
    assert (info.value.code, info.value.request_id) == ("message.invalid", rid)


def test_input_at_the_limits_is_accepted() -> None:
    """16 levels, a surrogate pair, the largest safe id and finite floats all pass."""
    deep = '{"type":"clientEvent","id":' + str(2**53 - 1) + ',"event":"e","data":{"k":' \
        + "[" * 14 + "1.5e308" + "]" * 14 + "}}"
    msg = parse_client_message(deep)
    assert isinstance(msg, ClientEvent) and msg.id == 2**53 - 1
    assert parse_client_message('{"type":"ping","id":"\\ud83d\\ude00"}').id == "\U0001F600"


@given(st.recursive(st.none() | st.floats() | st.text(), lambda inner: st.lists(inner)
                    | st.dictionaries(st.text(), inner), max_leaves=30))
def test_whatever_is_accepted_encodes_back_to_strict_utf8_json(data: object) -> None:
    """Anything the parser lets through re-serializes as RFC 8259 JSON in UTF-8."""
    text = json.dumps({"type": "clientEvent", "id": 1, "event": "e", "data": {"d": data}})
    try:
        msg = parse_client_message(text)
    except MessageError as exc:
        assert exc.code in ("message.invalid", "message.too_large")
        return
    assert isinstance(msg, ClientEvent)
    json.dumps(msg.data, allow_nan=False, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32-le"])
def test_a_message_as_bytes_parses_as_its_text_does(encoding: str) -> None:
    """Bytes in any JSON encoding parse to the same message as the text (the decoder is
    made once, so bytes are decoded before it, as `json.loads` would)."""
    text = '{"type":"clientEvent","event":"é","data":{"a":[1,"ü"]}}'
    assert parse_client_message(text.encode(encoding)) == parse_client_message(text)


def test_the_first_missing_required_field_is_named() -> None:
    """A message lacking several required fields names the first one declared."""
    with pytest.raises(MessageError, match=r"subscribe\.participant: required"):
        parse_client_message('{"type":"subscribe"}')
