"""Postfix's smtp-sink on 127.0.0.1 for the benchmarks (only the sink program, never the daemon)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([SINK, *user, f"127.0.0.1:{port}", "1024"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("smtp-sink did not start")
