"""The web archive: `/issues` lists what was sent, `/issues/{id}` shows one issue.

Each email links here ("View in your browser"), so an issue appears as soon as
its first copy has been delivered, not only when the whole send is finished.
The stored HTML is the email itself: its per-reader unsubscribe placeholder
becomes a link to a page that explains where the personal link is, so nobody's
token is ever on a public page. The email's CSS is inline, hence its own CSP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.db import read_session
from newsletter.errors import TokenError
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus
from newsletter.render import UNSUBSCRIBE_URL

if TYPE_CHECKING:
    from newsletter.web import Pages

#: Stored issue HTML: inline styles, remote story images, nothing else.
ARCHIVE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ArchiveEntry:
    id: int
    subject: str
    date: str  # "3 March 2025"
    iso: str


def _published() -> sa.ColumnElement[bool]:
    """Sent, or at least one copy delivered (a send may still be under way)."""
    delivered = (
        sa.select(Delivery.id)
        .where(Delivery.issue_id == Issue.id, Delivery.status == DeliveryStatus.SENT)
        .exists()
    )
    return sa.or_(Issue.status == IssueStatus.SENT, delivered)


def archived_issues(engine: Engine, limit: int = 500) -> list[ArchiveEntry]:
    """Published issues, newest first (read-only; the HTML bodies are not loaded)."""
    stmt = (
        sa.select(Issue.id, Issue.subject, Issue.created_at)
        .where(_published())
        .order_by(sa.desc(Issue.id))
        .limit(limit)
    )
    with read_session(engine) as session:
        rows = session.execute(stmt).all()
    return [
        ArchiveEntry(id, subject, f"{created.day} {created:%B %Y}", created.date().isoformat())
        for id, subject, created in rows
    ]


def archived_issue_html(engine: Engine, settings: Settings, issue_id: int) -> str | None:
    """One published issue as a web page, with no personal link in it; None if unknown."""
    stmt = sa.select(Issue.html).where(Issue.id == issue_id, _published())
    with read_session(engine) as session:
        html = session.execute(stmt).scalar_one_or_none()
    if html is None:
        return None
    return html.replace(UNSUBSCRIBE_URL, settings.url("unsubscribe"))


def archive_router(settings: Settings, engine: Engine, pages: Pages) -> APIRouter:
    router = APIRouter()

    @router.api_route("/issues", methods=["GET", "HEAD"])
    def issues() -> HTMLResponse:
        return pages.render("issues.html", noindex=False, issues=archived_issues(engine))

    @router.api_route("/issues/{issue_id}", methods=["GET", "HEAD"])
    def issue(issue_id: str) -> HTMLResponse:
        html = None
        if issue_id.isdigit() and len(issue_id) < 12:
            html = archived_issue_html(engine, settings, int(issue_id))
        if html is None:
            raise TokenError("no such issue")  # the generic 404 page
        return HTMLResponse(html, headers={"Content-Security-Policy": ARCHIVE_CSP})

    return router
