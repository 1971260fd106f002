"""The `site` fixture shared by the web tests: the app under uvicorn on 127.0.0.1 with a real
SQLite file (or PostgreSQL) and a real aiosmtpd server; modules may define their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_web import Site, start_site

from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer


@pytest.fixture
def site(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Site]:
    with WebServer() as server:
        made = start_site(tmp_path, smtp_server, server)
        try:
            yield made
        finally:
            made.close()
