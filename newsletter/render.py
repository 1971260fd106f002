"""Render an issue once: subject, HTML (CSS inlined) and text (no DB writes).

CONTRACT (used by newsletter.issues and newsletter.message):

    UNSUBSCRIBE_URL = "%%UNSUBSCRIBE_URL%%"   # placeholder filled per subscriber
    render_issue(stories, settings, *, issue_id, feed_title, feed_link) -> RenderedIssue
"""

from __future__ import annotations

from dataclasses import dataclass

UNSUBSCRIBE_URL = "%%UNSUBSCRIBE_URL%%"


@dataclass(frozen=True)
class RenderedIssue:
    subject: str  # one line, no control characters
    html: str  # full document, CSS inlined, contains UNSUBSCRIBE_URL
    text: str  # real plain-text version, contains UNSUBSCRIBE_URL
