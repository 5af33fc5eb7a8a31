"""Every setting of the server in one typed object, checked before anything starts (one line per bad option).

``adaptformer serve`` builds it from its options; ``create_app`` and the Ray deployment take it as is. Each check
names the command-line option, so a user sees ``error: --port 99999: expected 0-65535`` and exit status 2 rather
than a traceback from uvicorn, and a limit of 0 or -1 is refused instead of starting a server that refuses
everything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdaptFormerError
from ..utils.options import is_int, option

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
ANY_INTERFACE = ("0.0.0.0", "::", "")
API_KEY_ENV = "ADAPTFORMER_API_KEY"


NETWORK, SECURITY, LIMITS = "network", "security", "batching and limits"


@dataclass
class ServeSettings:
    """Every option of ``adaptformer serve`` but the task store's: the command line is derived from these fields
    (``cli/options.add_grouped_options``), so an option and its default are written once, here."""

    host: str = option("127.0.0.1", "interface to listen on; any but loopback needs an API key or --insecure",
                       group=NETWORK)  # fmt: skip
    port: int = option(8000, "port", group=NETWORK)
    max_connections: int = option(256, "open connections at once; beyond: 503", group=NETWORK)
    header_timeout_s: float = option(10.0, "seconds to send request headers", flag="--header-timeout", group=NETWORK)
    body_timeout_s: float = option(30.0, "seconds between body chunks", flag="--body-timeout", group=NETWORK)
    keep_alive_s: int = option(5, "seconds an idle connection stays open", flag="--keep-alive", group=NETWORK)
    shutdown_grace_s: float = option(
        10.0, "at SIGTERM, seconds requests in progress may still finish; then a JSON 503", flag="--shutdown-grace",
        group=NETWORK,
    )  # fmt: skip
    ssl_keyfile: str | None = option(None, "serve HTTPS with this key (and --ssl-certfile)", group=NETWORK)
    ssl_certfile: str | None = option(None, "the certificate for --ssl-keyfile", group=NETWORK)
    access_log: bool = option(True, "log each request", group=NETWORK)
    api_key: str | None = option(
        None, f"Bearer key for state-changing endpoints (or --api-key-file, or {API_KEY_ENV})", group=SECURITY
    )
    auth_everything: bool = option(False, "require the key on every endpoint that holds data", group=SECURITY)
    insecure: bool = option(False, "allow a non-loopback --host without an API key", group=SECURITY)
    allowed_hosts: list[str] = option(
        help="a Host header accepted beside the loopback names and --host; repeat", factory=list,
        flag="--allowed-host", repeat=True, group=SECURITY,
    )  # fmt: skip
    cors_origins: list[str] = option(
        help="an origin allowed by CORS; repeat (none)", factory=list, flag="--cors-origin", repeat=True,
        group=SECURITY,
    )  # fmt: skip
    max_batch: int = option(32, "rows per mixed-task batch", group=LIMITS)
    max_wait_ms: float = option(5.0, "how long a batch waits to fill", group=LIMITS)
    batching: bool = option(True, "batch concurrent requests (--no-batching: one request per batch)", group=LIMITS)
    max_upload_mb: float = option(16.0, "largest upload", group=LIMITS)
    max_json_kb: float = option(64.0, "largest JSON request body", group=LIMITS)
    max_pixels: int = option(40_000_000, "largest image (decompression-bomb limit)", group=LIMITS)
    max_clip_frames: int = option(100_000, "longest clip accepted", group=LIMITS)
    max_tasks_per_request: int | None = option(None, "tasks one request may name (none: any)", group=LIMITS)
    decode_workers: int = option(2, "threads decoding uploads", group=LIMITS)
    max_queue: int = option(64, "requests decoding or waiting for the model; beyond: 503 + Retry-After", group=LIMITS)

    def __post_init__(self) -> None:
        _port(self.port)
        _positive_int("--max-batch", self.max_batch)
        _non_negative("--max-wait-ms", self.max_wait_ms)
        _positive("--max-upload-mb", self.max_upload_mb)
        _positive("--max-json-kb", self.max_json_kb)
        _positive_int("--max-pixels", self.max_pixels)
        _positive_int("--max-clip-frames", self.max_clip_frames)
        if self.max_tasks_per_request is not None:
            _positive_int("--max-tasks-per-request", self.max_tasks_per_request)
        _positive_int("--decode-workers", self.decode_workers)
        _positive_int("--max-queue", self.max_queue)
        _positive_int("--max-connections", self.max_connections)
        _positive("--header-timeout", self.header_timeout_s)
        _positive("--body-timeout", self.body_timeout_s)
        _positive_int("--keep-alive", self.keep_alive_s)
        _non_negative("--shutdown-grace", self.shutdown_grace_s)
        if self.api_key is not None and len(self.api_key) < 16:
            raise AdaptFormerError("--api-key: expected at least 16 characters (a random token)")
        if self.auth_everything and self.api_key is None:
            raise AdaptFormerError("--auth-everything needs --api-key (or ADAPTFORMER_API_KEY)")
        if not self.is_loopback and self.api_key is None and not self.insecure:
            raise AdaptFormerError(
                f"--host {self.host}: reachable from other machines, yet no --api-key is set; give a key "
                "(--api-key-file or ADAPTFORMER_API_KEY) or pass --insecure to serve without one"
            )
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise AdaptFormerError("--ssl-keyfile and --ssl-certfile: give both or neither")
        for name, value in (("--ssl-keyfile", self.ssl_keyfile), ("--ssl-certfile", self.ssl_certfile)):
            if value is not None and not Path(value).is_file():
                raise AdaptFormerError(f"{name} {value}: no such file")
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise AdaptFormerError(f"--cors-origin {origin!r}: expected scheme://host[:port] or *")

    @property
    def is_loopback(self) -> bool:
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_kb * 1024)

    @property
    def hosts(self) -> list[str]:
        """Host header names accepted (without the port): the loopback names always (the machine's own health
        checks), --host, and every --allowed-host."""
        return list(dict.fromkeys(name.lower() for name in (*LOOPBACK_NAMES, self.host, *self.allowed_hosts) if name))

    def host_allowed(self, host: str) -> bool:
        """Whether a request's Host header (without the port) may reach the server. DNS rebinding needs a domain
        name that resolves to the server: a name is accepted only when it is one of ``hosts``; a server on every
        interface (0.0.0.0 / ::) also accepts an IP address literal (any of its addresses: no rebinding through
        one) and the machine's own host name."""
        host = host.lower()
        if host in self.hosts:
            return True
        if self.host not in ANY_INTERFACE:
            return False
        return _is_ip_literal(host) or host in _machine_names()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    return names


def read_api_key(key: str | None, key_file: str | None) -> str | None:
    """The key from --api-key, else --api-key-file (first line), else ADAPTFORMER_API_KEY; None when none."""
    if key is not None and key_file is not None:
        raise AdaptFormerError("--api-key and --api-key-file: give one of them")
    if key_file is not None:
        try:
            text = Path(key_file).read_text().strip().splitlines()
        except OSError as error:
            raise AdaptFormerError(f"--api-key-file {key_file}: cannot read ({error.strerror})") from None
        if not text or not text[0].strip():
            raise AdaptFormerError(f"--api-key-file {key_file}: empty")
        return text[0].strip()
    return key if key is not None else (os.environ.get(API_KEY_ENV) or None)


def _port(value: int) -> None:
    if not is_int(value, 0) or value > 65535:
        raise AdaptFormerError(f"--port {value}: expected 0-65535")


def _positive_int(option: str, value) -> None:
    if not is_int(value, 1):
        raise AdaptFormerError(f"{option} {value}: expected a positive integer")


def _positive(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise AdaptFormerError(f"{option} {value}: expected a positive number")


def _non_negative(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
        raise AdaptFormerError(f"{option} {value}: expected a number >= 0")
