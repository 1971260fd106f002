"""Shared by the DKIM tests: one real signing key per test module."""

from __future__ import annotations

import pytest

from newsletter.mail.dkimkey import GeneratedKey, generate_key


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKey:
    """One real key for the module (RSA generation costs ~0.1 s), for the sender's domain."""
    folder = tmp_path_factory.mktemp("dkim")
    return generate_key(folder / "dkim.pem", selector="news2026", domain="endseclusion.org")
