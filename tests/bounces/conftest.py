"""The `site` fixture of the bounce tests: a database whose readers were all sent one issue
(tests/support/bouncesite.py); a module that needs other readers overrides `readers`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bouncesite import READERS, Site, sent_site


@pytest.fixture
def readers() -> list[str]:
    return READERS


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readers: list[str]) -> Site:
    monkeypatch.chdir(tmp_path)  # no .env from elsewhere
    return sent_site(tmp_path, readers)
