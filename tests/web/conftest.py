"""The `site` fixture shared by the web tests: the app under uvicorn on 127.0.0.1 with a real
SQLite file (or PostgreSQL) and a real aiosmtpd server; modules may define their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.smtpserver import SMTPServer
from tests.support.website import Site, served_site


@pytest.fixture
def site(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Site]:
    with served_site(tmp_path, smtp_server) as made:
        yield made
