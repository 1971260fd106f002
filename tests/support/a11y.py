"""Accessibility checks in a real browser: axe-core injected into Debian's chromium.

axe-core comes from npm (``package.json`` at the repo root; ``.ci/run`` runs
``npm ci``), so it is loaded from ``node_modules/`` and injected with
``page.add_script_tag(path=...)``. The pages of ``newsletter serve`` forbid
every script in their CSP; tests open them in a context made with
``bypass_csp=True`` (the app's own CSP is never weakened).

Example::

    page.goto(url)
    violations = check_page(page, "web-subscribe")
    assert not violations, describe(violations)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.browser import REPO_ROOT, save_screenshot, unavailable_reason

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

AXE_JS = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"
#: WCAG 2.0 and 2.1, levels A and AA, plus axe's best practices.
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice")
PHONE: ViewportSize = {"width": 375, "height": 812}
DESKTOP: ViewportSize = {"width": 800, "height": 900}
VIEWPORTS: dict[str, ViewportSize] = {"375": PHONE, "800": DESKTOP}
SCHEMES = ("light", "dark")

#: Best-practice rules that cannot apply to an email, with the reason. An email is shown
#: inside the mail client's own page, within the client's `main` landmark: a `main` of its
#: own would be a second one (axe's landmark-no-duplicate-main there), so the email marks
#: itself as an article (role="article" aria-roledescription="email") instead.
EMAIL_INAPPLICABLE = {
    "landmark-one-main": "the mail client's page holds the one main landmark",
    "region": "an email sits inside the client's landmarks; its own wrapper is an article",
}


def axe_unavailable_reason() -> str | None:
    """Why axe checks cannot run here (no chromium, or no `npm ci`), or None."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    if not AXE_JS.is_file():
        return "needs axe-core in node_modules/ (run `npm ci` at the repo root)"
    return None


def inject_axe(page: Page) -> None:
    """Load axe-core into the current document (again after every navigation)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE_JS))


def run_axe(page: Page, disabled: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """axe's violations for the page as it looks now (viewport, colour scheme)."""
    inject_axe(page)
    rules = {rule: {"enabled": False} for rule in disabled or {}}
    options = {"runOnly": {"type": "tag", "values": list(AXE_TAGS)}, "rules": rules}
    result = page.evaluate("options => axe.run(document, options)", options)
    return list(result["violations"])


def describe(violations: list[dict[str, Any]]) -> str:
    """A readable summary: rule, impact, help, and the first few offending nodes."""
    lines = []
    for violation in violations:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"][:5]:
            summary = " ".join(node.get("failureSummary", "").split())
            lines.append(f"    {node['target']}: {summary[:300]}")
    return "\n".join(lines)


def check_page(
    page: Page, name: str, disabled: Mapping[str, str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """axe at 375 and 800 px in light and dark; a screenshot of each. Returns the failures.

    The keys of the result say where a violation was seen ("375-dark"); the phone
    width must also show no horizontal scrolling (recorded as a pseudo-violation).
    """
    failures: dict[str, list[dict[str, Any]]] = {}
    for scheme in SCHEMES:
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        for width, viewport in VIEWPORTS.items():
            page.set_viewport_size(viewport)
            save_screenshot(page, f"{name}-{width}-{scheme}")
            violations = run_axe(page, disabled)
            overflow = page.evaluate("document.documentElement.scrollWidth")
            if overflow > viewport["width"]:
                violations.append(_overflow(overflow, viewport["width"]))
            if violations:
                failures[f"{width}-{scheme}"] = violations
    page.emulate_media(color_scheme="light")
    return failures


def describe_failures(failures: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> str:
    """Failures by page and by viewport/scheme, for an assertion message."""
    out = []
    for page_name, by_view in failures.items():
        for view, violations in by_view.items():
            out.append(f"{page_name} at {view}:\n{describe(violations)}")
    return "\n".join(out)


def assert_email_passes_axe(page: Page, screenshot: str, label: str) -> None:
    """`check_page` for an email opened in `page` (the rules that cannot apply to an email
    off): no failure at any width or scheme, else each one described under `label`."""
    failures = check_page(page, screenshot, EMAIL_INAPPLICABLE)
    assert not failures, describe_failures({label: failures})


def _overflow(width: int, limit: int) -> dict[str, Any]:
    return {
        "id": "horizontal-scroll",
        "impact": "serious",
        "help": f"page is {width}px wide in a {limit}px viewport (WCAG 1.4.10 reflow)",
        "nodes": [],
    }


def placeholder_svg(width: int = 1024, height: int = 683) -> bytes:
    """A grey stand-in for a remote story image (tests never reach the network)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="#8a9aa8"/></svg>'
    ).encode("ascii")


def file_url(path: Path) -> str:
    return path.resolve().as_uri()
