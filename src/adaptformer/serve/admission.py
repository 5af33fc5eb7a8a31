"""What reaches the app: the Host header, the API key, and the size and pace of the request body.

A pure ASGI middleware in front of the routes; every refusal is a JSON ``{"detail": ..., "error": ...}``:

* **Host** (400): a Host header the settings do not allow (``ServeSettings.host_allowed``: the loopback names,
  ``--host``, ``--allowed-host``; on 0.0.0.0 also IP literals and the machine's name) is refused, so a page on
  another site cannot reach the server through DNS rebinding.
* **Origin** (403): a request that runs or changes something (any method but GET, HEAD and OPTIONS) sent by a
  page of another site (its ``Origin`` names neither this server nor a ``--cors-origin``) is refused: a browser
  sends a cross-site form POST without asking first, key or no key.
* **API key** (401): with a key set, state-changing endpoints (loading, refreshing and removing tasks) need
  ``Authorization: Bearer KEY``; with ``auth_everything`` every endpoint does but ``/ready`` and the pages that
  hold no data (``/``, which then asks for the key, and the API docs). Keys are compared
  in constant time.
* **Body size** (413): a ``Content-Length`` over the limit is refused before a byte of the body is read; a body
  sent without one (chunked) is counted while it streams and cut off at the limit, so nothing over the limit is
  ever received or spooled. Uploads (``/predict``, ``/v2/models/{task}/infer``) are bounded by
  ``--max-upload-mb``, every other body by
  ``--max-json-kb``.
* **Body pace** (408): a body chunk that takes longer than ``--body-timeout`` to arrive ends the request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field

from fastapi import HTTPException

from .settings import ServeSettings

# An unread body would otherwise still be received (and thrown away) to its end: closing stops the sender.
CLOSE = {"connection": "close"}
#: reachable without a key even with --auth-everything: orchestrators' probes, and pages that hold no data (the
#: page asks for the key and sends it with every call it makes; the API docs and their assets)
OPEN_PATHS = ("/ready", "/v2/health/live", "/v2/health/ready", "/", "/docs", "/redoc", "/openapi.json", "/favicon.ico")
OPEN_PREFIXES = ("/assets/docs/",)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around an upload of the full allowed size
STATE_CHANGING = ("/tasks",)  # POST /tasks, POST /tasks/refresh, DELETE /tasks/{name}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class Refusal:
    status: int
    detail: str
    kind: str  # the label of the errors counter
    headers: dict[str, str] = field(default_factory=dict)


class Admission:
    def __init__(self, app, settings: ServeSettings, on_refusal=None):
        self.app, self.settings = app, settings
        self.on_refusal = on_refusal or (lambda kind: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            self.on_refusal(refusal.kind)
            return await _json(send, refusal.status, refusal.detail, refusal.headers)
        limit = self._body_limit(scope["path"])
        await self.app(scope, _bounded(receive, limit, self.settings.body_timeout_s), send)

    def _refusal(self, scope, headers: dict[str, str]) -> Refusal | None:
        host = _host_name(headers.get("host", ""))
        if not self.settings.host_allowed(host):
            return Refusal(400, f"Host {host[:100]!r}: not an allowed host (--allowed-host)", "host")
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS and not self._origin_ok(origin, host):
            detail = (
                f"Origin {origin[:100]!r}: a page of another site may not run or change anything here (--cors-origin)"
            )
            return Refusal(403, detail, "origin")
        if self._needs_key(scope) and not self._key_ok(headers.get("authorization", "")):
            challenge = {"www-authenticate": 'Bearer realm="adaptformer"'}
            return Refusal(401, "missing or wrong API key: send Authorization: Bearer KEY", "auth", challenge)
        length = headers.get("content-length")
        limit = self._body_limit(scope["path"])
        if length is not None:
            if not length.isdigit():
                return Refusal(400, "Content-Length: expected a number of bytes", "bad_request")
            if int(length) > limit:
                return Refusal(413, f"request body of {int(length)} bytes; at most {limit}", "too_large", CLOSE)
        return None

    def _origin_ok(self, origin: str, host: str) -> bool:
        """A browser names the page that sent a request in ``Origin``: this server's own page, or one that
        ``--cors-origin`` lists."""
        allowed = self.settings.cors_origins
        return "*" in allowed or origin in allowed or _host_name(origin.split("://", 1)[-1]).lower() == host.lower()

    def _needs_key(self, scope) -> bool:
        if self.settings.api_key is None or scope["method"] == "OPTIONS":
            return False
        if self.settings.auth_everything:
            path = scope["path"]
            return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)
        return scope["method"] not in ("GET", "HEAD") and scope["path"].startswith(STATE_CHANGING)

    def _key_ok(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        expected = self.settings.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    def _body_limit(self, path: str) -> int:
        if path.startswith("/predict") or (path.startswith("/v2/models/") and path.endswith("/infer")):
            return self.settings.max_upload_bytes + MULTIPART_OVERHEAD
        return self.settings.max_json_bytes


def _bounded(receive, limit: int, timeout: float):
    """``receive`` that counts body bytes (413 past ``limit``) and waits at most ``timeout`` for each chunk."""
    received = 0

    async def wrapped():
        nonlocal received
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {timeout:g} s", CLOSE) from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body over {limit} bytes", CLOSE)
        return message

    return wrapped


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8000
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _json(send, status: int, detail: str, extra_headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail, "error": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra_headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
