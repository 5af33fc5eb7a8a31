"""Running the app under uvicorn with the settings' connection limits, timeouts, TLS and access log."""

from __future__ import annotations

import logging
import socket

import uvicorn

from ..bank import TaskBank
from ..errors import AdaptFormerError
from .app import create_app
from .protocol import with_header_timeout
from .settings import ServeSettings

log = logging.getLogger("adaptformer.serve")


def uvicorn_config(app, settings: ServeSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=with_header_timeout(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,  # more open connections than this: 503
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # then requests still running get a JSON 503
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        access_log=settings.access_log,
        log_level="info" if settings.access_log else "warning",
        server_header=False,
        proxy_headers=False,  # client addresses in the access log are the peers', not a header's claim
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that is taken, in one line, before uvicorn logs a traceback-like error and exits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise AdaptFormerError(f"--host {host} --port {port}: cannot listen ({error.strerror})") from None


def run_server(bank: TaskBank, task_dir, settings: ServeSettings) -> None:
    check_port_free(settings.host, settings.port)
    app = create_app(bank, task_dir, settings)
    scheme = "https" if settings.ssl_certfile else "http"
    key = "required for every endpoint" if settings.auth_everything else "required to change tasks"
    print(
        f"adaptformer: {len(bank.tasks)} tasks on {scheme}://{settings.host}:{settings.port} "
        f"(API key {key if settings.api_key else 'not set'}; Ctrl-C stops)",
        flush=True,
    )
    if not settings.is_loopback and settings.api_key is None:
        log.warning(
            "serving on %s without an API key (--insecure): anyone who can reach it can change tasks", settings.host
        )
    uvicorn.Server(uvicorn_config(app, settings)).run()
