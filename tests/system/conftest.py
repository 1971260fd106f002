"""Fixtures shared by the system tests that open an email in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.a11y import PHONE, axe_unavailable_reason

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture
def axe_page(browser: Browser) -> Iterator[Page]:
    """A phone-sized page whose context ignores CSP, so axe-core can be injected into our
    script-free emails and pages; skipped when axe-core is not installed."""
    reason = axe_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    context = browser.new_context(bypass_csp=True, viewport=PHONE)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
