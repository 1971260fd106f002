"""Run an ASGI app under a real uvicorn server in a thread, on 127.0.0.1 and a free port.

The socket is bound before the app is built, so the app's settings can carry
the server's own URL as NEWSLETTER_BASE_URL (the links in emails then lead
back to it) and no other process can take the port in between.

Example::

    with WebServer() as server:
        server.start(create_app(settings_for(tmp_path, NEWSLETTER_BASE_URL=server.url)))
        httpx.get(server.url + "/health")
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from newsletter.web.app import log_config


class WebServer:
    host = "127.0.0.1"

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, app: Any, timeout: float = 10.0) -> WebServer:
        """Serve `app` (with the token-masking access log) until `stop`."""
        config = uvicorn.Config(
            app, log_config=log_config(), lifespan="off", server_header=False, access_log=True
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test web server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
        self._sock.close()

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
