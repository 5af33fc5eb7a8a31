"""uvicorn's HTTP/1.1 protocol (h11) with a header timeout, and its own refusals as one line of JSON.

uvicorn closes a connection that stays idle *between* requests (``timeout_keep_alive``), but a client that opens a
connection and sends its request line and headers a byte at a time keeps it forever -- each byte restarts the
idle timer. Here a connection must deliver complete request headers within ``header_timeout`` of opening (or of
its previous response), or it is closed.

uvicorn answers some requests before they reach the app, in plain text: a request it cannot parse (a garbage
request line, a Content-Length of ``abc``, ``-1``, ``+5`` or two of them) with 400, and a connection beyond
``--max-connections`` with 503. Here both are ``{"detail": ...}`` like every other error, the 503 with
``Retry-After``. Everything else is uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

RETRY_AFTER_S = 1


def _json_body(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


async def busy(scope, receive, send) -> None:
    """What a connection beyond ``--max-connections`` gets (uvicorn's ``service_unavailable``, as JSON)."""
    body = _json_body(f"too many open connections (--max-connections); try again in {RETRY_AFTER_S} s")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    # uvicorn's h11 protocol picks its 503 app from its module when the limit is hit; this server's is JSON
    h11_impl.service_unavailable = busy

    class HeaderTimeoutH11(H11Protocol):
        header_timeout = seconds

        def send_400_response(self, msg: str) -> None:  # a request h11 cannot parse: JSON, then close
            body = _json_body("malformed HTTP request (request line, headers or Content-Length)")
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = None
            self._start_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request's headers are complete
                self._stop_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._start_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def _start_header_timer(self) -> None:
            self._stop_header_timer()
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11
