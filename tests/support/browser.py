"""Playwright on Debian's chromium, for tests that look at pages as a person would.

Playwright cannot download its own browser build here, so it drives the
distribution's chromium. The flags keep that browser from reaching the network
on its own (updates, sync, QUIC probes) and let it run as root in CI.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
SKIP_REASON = "needs Debian's chromium at /usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"


def unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return SKIP_REASON
    if importlib.util.find_spec("playwright") is None:
        return f"{SKIP_REASON} and the playwright package (pip install -e '.[test]')"
    return None


def save_screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/screenshots/ (git-ignored) and return its path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "screenshot"
    if not safe.endswith(".png"):
        safe += ".png"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / safe
    page.screenshot(path=str(path), full_page=True)
    return path
