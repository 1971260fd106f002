"""Fetch and parse the site's feed into clean `FeedStory` values (no DB writes).

CONTRACT (used by newsletter.issues; keep these names and fields):

    fetch_feed(source, *, timeout=20.0, etag=None, last_modified=None) -> FetchResult
    parse_feed(data: bytes, *, base_url: str | None = None) -> Feed
    load_feed(source, *, timeout=20.0) -> Feed    # fetch + parse, no conditional GET
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class FeedStory:
    uid: str  # stable identity: "guid:...", "link:...", "post:...", or "hash:..."
    title: str  # plain text, one line, unescaped once, mojibake repaired
    link: str | None
    guid: str | None
    author: str | None
    summary_html: str  # sanitised
    content_html: str  # sanitised, absolute URLs, WordPress cruft removed
    image_url: str | None  # a real story image, never the author's Gravatar
    image_alt: str | None
    published_at: datetime | None  # timezone-aware UTC


@dataclass(frozen=True)
class Feed:
    title: str
    link: str | None
    stories: list[FeedStory] = field(default_factory=list)  # newest first


@dataclass(frozen=True)
class FetchResult:
    data: bytes | None  # None when the server answered 304 Not Modified
    url: str  # final URL (after redirects) or the file path
    etag: str | None = None
    last_modified: str | None = None
