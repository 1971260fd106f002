"""`newsletter serve` start-up and connection limits, with a real `newsletter serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tests.support.helpers import BASE_ENV, ROOT
from tests.support.helpers import run_cli as run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(cwd: Path, *args: str) -> Iterator[str]:
    """A running `newsletter serve` on a free port; yields its URL once /health answers."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(BASE_ENV, NEWSLETTER_OUTBOX="outbox", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """It printed "Serving ..." and then exited 3 with uvicorn's traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "serve", "--port", str(port), **BASE_ENV, NEWSLETTER_OUTBOX="o")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Serving" not in result.stdout and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"Error: port {port} on 127.0.0.1 is already in use. Stop the program listening "
        "there, or choose another port with --port."
    ]
    assert list(tmp_path.iterdir()) == []  # no database created for a server that never ran


def test_a_client_sending_half_a_request_line_is_dropped(tmp_path: Path) -> None:
    """Half-open connections must not pile up: uvicorn has no header timeout of its own."""
    with serving(tmp_path, "--header-timeout", "1") as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(b"GET /hea")
            try:
                closed = conn.recv(1024) == b""  # the server closed the connection
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                closed = False
        assert closed, "the half-open connection was still open after 60 s"
        # a connection that sends nothing at all is dropped as well
        with (
            socket.create_connection((host, int(port)), timeout=60) as idle,
            suppress(ConnectionResetError),
        ):
            assert idle.recv(1024) == b""
        # complete requests, on a kept-alive connection too, are served as before
        with httpx.Client(base_url=url) as client:
            assert client.get("/health").status_code == 200
            assert client.get("/health").status_code == 200
