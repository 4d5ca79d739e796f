"""The REST server's connections: TCP_NODELAY on every accepted socket.

Without it a response written in two parts waits for the client's delayed ACK
(Nagle's algorithm): 40 ms on every request of a keep-alive poller. The check is
on the socket option of the live connection, not on a timing.
"""

from __future__ import annotations

import http.client
import socket


def test_accepted_rest_connections_have_nodelay(service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status":"ok"}'
        live = list(service._http.server_state.connections)
        assert live, "the server holds no connection"
        for protocol in live:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        conn.close()
