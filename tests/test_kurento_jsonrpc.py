"""The Kurento JSON-RPC codec's `transaction` support, byte for byte (no I/O)."""

from __future__ import annotations

import json

import pytest

from kurento_ctl.errors import ProtocolViolation
from kurento_ctl.jsonrpc import ClientProtocol, Reply, encode_operations, transaction_replies


def test_a_transaction_request_numbers_its_ops_from_zero_and_carries_the_session() -> None:
    """A transaction numbers its operations from 0 and carries the session id, as KMS expects."""
    protocol = ClientProtocol(first_id=7)
    protocol.session_id = "S"
    ops = encode_operations([
        ("create", {"type": "MediaPipeline", "constructorParams": {}, "properties": {}}),
        ("create", {"type": "WebRtcEndpoint", "constructorParams": {"mediaPipeline": "newref:0"},
                    "properties": {}}),
        ("invoke", {"object": "newref:1", "operation": "gatherCandidates"}),
    ])
    request_id = protocol.send_request("transaction", {"operations": ops})
    [text] = protocol.data_to_send()
    assert request_id == 7
    assert json.loads(text) == {
        "jsonrpc": "2.0", "id": 7, "method": "transaction", "params": {
            "sessionId": "S",
            "operations": [
                {"jsonrpc": "2.0", "id": 0, "method": "create", "params": {
                    "type": "MediaPipeline", "constructorParams": {}, "properties": {}}},
                {"jsonrpc": "2.0", "id": 1, "method": "create", "params": {
                    "type": "WebRtcEndpoint", "constructorParams": {"mediaPipeline": "newref:0"},
                    "properties": {}}},
                {"jsonrpc": "2.0", "id": 2, "method": "invoke", "params": {
                    "object": "newref:1", "operation": "gatherCandidates"}},
            ]}}


def test_transaction_replies_stop_at_the_first_error() -> None:
    """A transaction's replies stop at the first failed operation; those after it are None."""
    result = json.loads(
        '{"sessionId":"S","value":[{"id":0,"jsonrpc":"2.0","result":{"sessionId":"S",'
        '"value":"p_kurento.MediaPipeline"}},{"error":{"code":40201,"data":{"type":'
        '"SDP_PARSE_ERROR"},"message":"Empty offer not valid"},"id":1,"jsonrpc":"2.0"}]}')
    assert transaction_replies(result, 3) == [
        Reply(0, result={"sessionId": "S", "value": "p_kurento.MediaPipeline"}),
        Reply(1, error={"code": 40201, "data": {"type": "SDP_PARSE_ERROR"},
                        "message": "Empty offer not valid"}),
        None,
    ]


@pytest.mark.parametrize("result", [
    None,
    {"sessionId": "S"},
    {"value": [{"id": 1, "jsonrpc": "2.0", "result": {}}]},
    {"value": [{"id": 0, "result": {}}, {"id": 1, "result": {}}]},
])
def test_a_transaction_result_that_does_not_match_its_ops_is_a_protocol_violation(
    result: object,
) -> None:
    """A transaction result whose replies do not match its operations is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        transaction_replies(result, 1)
