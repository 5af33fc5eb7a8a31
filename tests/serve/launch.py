"""Start ``adaptformer serve`` as a real subprocess on a free local port, and stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    arguments: list[str], timeout: float = 120, scheme: str = "http", env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """``adaptformer serve ARGUMENTS --port P`` (``env``: more environment variables); returns once /health answers
    (the test fails otherwise)."""
    port = free_port()
    command = [sys.executable, "-m", "adaptformer", "serve", *arguments, "--port", str(port)]
    # the output goes to a file, not a pipe: a pipe nobody reads fills up with access-log lines and blocks the server
    log = tempfile.NamedTemporaryFile(prefix="adaptformer-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    )
    process.log_path = log.name
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2, verify=False).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
        if process.poll() is not None:
            pytest.fail(server_log(process)[-2000:])
    process.kill()
    pytest.fail(f"the server did not start in {timeout:.0f} s")


def server_log(process: subprocess.Popen) -> str:
    with open(process.log_path, errors="replace") as f:
        return f.read()


def stop_server(process: subprocess.Popen, remove_log: bool = True) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if remove_log:  # kept for a failing test to print; once the server is down it is only litter in /tmp
        with contextlib.suppress(OSError):
            os.unlink(process.log_path)
