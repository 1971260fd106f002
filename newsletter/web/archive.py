"""The web archive: `/issues` lists what was sent, `/issues/{id}` shows one issue.

Each email links here ("View in your browser"), so an issue appears as soon as
its first copy has been delivered, not only when the whole send is finished.

An issue page is not the email: it renders the issue's stories (the same
words the email showed, through `newsletter.issues.render`) in the site's own page
layout (`web/issue.html` extends `web/base.html`), with links under today's
NEWSLETTER_BASE_URL. So a visitor never sees "View in your browser" or "You
are receiving this because you subscribed", and nobody's unsubscribe token can
be on a public page: the stored email is never shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine
from sqlmodel import col

from newsletter.config import Settings
from newsletter.db import read_session
from newsletter.errors import TokenError
from newsletter.issues.render import StoryView, newest_first, story_view
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Story
from newsletter.web.pages import Pages

#: Our page layout plus the stories' remote images (feed HTML is sanitised upstream).
ARCHIVE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' https: http: data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: ASCII digits only: str.isdigit() also accepts "²", which int() refuses (a 500).
_ISSUE_ID = re.compile(r"[0-9]{1,11}")


@dataclass(frozen=True)
class ArchiveEntry:
    id: int
    subject: str
    date: str  # "3 March 2025"
    iso: str


def _published() -> sa.ColumnElement[bool]:
    """Sent, or at least one copy delivered (a send may still be under way)."""
    delivered = (
        sa.select(col(Delivery.id))
        .where(
            col(Delivery.issue_id) == col(Issue.id),
            col(Delivery.status) == DeliveryStatus.SENT,
        )
        .exists()
    )
    return sa.or_(col(Issue.status) == IssueStatus.SENT, delivered)


def archived_issues(engine: Engine, limit: int = 500) -> list[ArchiveEntry]:
    """Published issues, newest first (read-only; the HTML bodies are not loaded)."""
    stmt = (
        sa.select(col(Issue.id), col(Issue.subject), col(Issue.created_at))
        .where(_published())
        .order_by(col(Issue.id).desc())
        .limit(limit)
    )
    with read_session(engine) as session:
        rows = session.execute(stmt).all()
    return [
        ArchiveEntry(id, subject, f"{created.day} {created:%B %Y}", created.date().isoformat())
        for id, subject, created in rows
    ]


@dataclass(frozen=True)
class ArchivedIssue:
    id: int
    subject: str
    date: str
    iso: str
    stories: list[StoryView]


def archived_issue(engine: Engine, issue_id: int) -> ArchivedIssue | None:
    """One published issue and its stories, newest first; None if unknown or unpublished."""
    with read_session(engine) as session:
        row = session.execute(
            sa.select(col(Issue.id), col(Issue.subject), col(Issue.created_at)).where(
                col(Issue.id) == issue_id, _published()
            )
        ).first()
        if row is None:
            return None
        stories = list(
            session.execute(
                sa.select(Story).where(col(Story.issue_id) == issue_id).order_by(col(Story.id))
            ).scalars()
        )
    id_, subject, created = row
    views = [story_view(story) for story in newest_first(stories)]
    date = f"{created.day} {created:%B %Y}"
    return ArchivedIssue(id_, subject, date, created.date().isoformat(), views)


def archive_router(settings: Settings, engine: Engine, pages: Pages) -> APIRouter:
    router = APIRouter()

    @router.api_route("/issues", methods=["GET", "HEAD"])
    def issues() -> HTMLResponse:
        return pages.render("issues.html", noindex=False, issues=archived_issues(engine))

    @router.api_route("/issues/{issue_id}", methods=["GET", "HEAD"])
    def issue(issue_id: str) -> HTMLResponse:
        found = None
        if _ISSUE_ID.fullmatch(issue_id):
            found = archived_issue(engine, int(issue_id))
        if found is None:
            raise TokenError("no such issue")  # the generic 404 page
        response = pages.render("issue.html", noindex=False, issue=found)
        response.headers["Content-Security-Policy"] = ARCHIVE_CSP
        return response

    return router
