"""The API's listening socket says TCP, so asyncio turns Nagle off on every connection."""

from __future__ import annotations

import socket


def test_the_listening_socket_is_tcp_so_responses_are_not_held_for_delayed_acks(
    start_server,
) -> None:
    """asyncio sets TCP_NODELAY on accepted sockets only when the listener's ``proto`` is
    IPPROTO_TCP; with ``proto`` 0 each response (headers and body written apart) waited
    ~40 ms for the client's delayed ACK: 23 sequential requests/s instead of >1000."""
    srv = start_server(tokens=None, workers=0)
    assert srv._sock is not None
    assert srv._sock.proto == socket.IPPROTO_TCP
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
