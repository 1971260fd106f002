"""The page renderer shared by every route: `Pages` fills templates/web/* with what each page needs.

Its own module so that app.py (the routes) and archive.py (the archive routes)
both use it without importing each other.

    Pages(settings).render(template, status, *, noindex=True, **context) -> HTMLResponse
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import HTMLResponse

from newsletter.config import Settings
from newsletter.issues.templating import render_template


class Pages:
    """Renders templates/web/* with what every page needs (list name, URL root)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = urlsplit(settings.base_url).path.rstrip("/")

    def render(
        self, template: str, status: int = 200, /, *, noindex: bool = True, **context: Any
    ) -> HTMLResponse:
        base = {
            "list_title": self.settings.list_title,
            "postal_address": self.settings.postal_address or "",
            "root": self.root,
            "noindex": noindex,
        }
        html = render_template(self.settings, f"web/{template}", {**base, **context})
        return HTMLResponse(html, status_code=status)

    def not_found(self) -> HTMLResponse:
        return self.render("not_found.html", 404)

    def error(self, status: int, heading: str, message: str) -> HTMLResponse:
        return self.render("error.html", status, heading=heading, message=message)

    def subscribe_form(self, status: int = 200, **values: str | None) -> HTMLResponse:
        """The signup page; `error` is about the address, `notice` about the whole signup
        (the honeypot, too many tries); `site_url` offers a way back to the site."""
        context = {
            "email": "",
            "name": "",
            "error": None,
            "notice": None,
            "notice_heading": None,
            "site_url": None,
            **values,
        }
        return self.render("subscribe.html", status, noindex=False, **context)
