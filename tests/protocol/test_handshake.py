"""The opening handshake's checks and answer (RFC 6455 4.2)."""

from __future__ import annotations

import pytest

from sn.protocol.handshake import HandshakeRefused, accept, accept_key

GOOD = {
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_the_rfc_example_key() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_request_gets_101_with_the_accept_key() -> None:
    response = accept({**GOOD, "connection": "keep-alive, Upgrade", "upgrade": "WebSocket", "content-length": "0"})
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n")
    assert b"Extensions" not in response  # no compression: one frame fits every recipient


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"upgrade": ""}, 426, "WebSocket only"),
        ({"upgrade": "h2c"}, 426, "WebSocket only"),
        ({"connection": "keep-alive"}, 400, "Connection"),
        ({"sec-websocket-version": "8"}, 426, "Version must be 13"),
        ({"sec-websocket-key": ""}, 400, "16 bytes"),
        ({"sec-websocket-key": "not base64!"}, 400, "16 bytes"),
        ({"sec-websocket-key": "c2hvcnQ="}, 400, "16 bytes"),
        ({"content-length": "5"}, 400, "no body"),
        ({"transfer-encoding": "chunked"}, 400, "no body"),
    ],
)
def test_bad_upgrade_requests_get_a_4xx_with_a_message(change: dict[str, str], status: int, words: str) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        accept({**GOOD, **change})
    assert refused.value.status == status
    assert words in refused.value.message
    if status == 426:
        assert refused.value.headers["Sec-WebSocket-Version"] == "13"
