"""Parse the site's feed into clean `FeedStory` values (no DB writes).

    parse_feed(data: bytes, *, base_url: str | None = None) -> Feed
    load_feed(source, *, timeout=20.0) -> Feed    # fetch + parse, no conditional GET

Fetching (conditional GET, deadlines, size cap) is fetch.py's job.

Every failure is a one-line `FeedError`: a broken or missing feed must stop a
send before anything is recorded, never clear what was sent before.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import feedparser

from newsletter.errors import FeedError
from newsletter.issues.feedhints import html_page_hint
from newsletter.issues.fetch import _root_element, fetch_feed
from newsletter.issues.sanitize import (
    clean_html,
    clean_text,
    display_url,
    first_content_image,
    is_avatar,
    normalize_link,
    plain_id,
    safe_url,
)

MAX_UID_LENGTH = 500
MAX_GUID_LENGTH = 1000  # the Story table's column sizes
MAX_URL_LENGTH = 2000
_BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


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


def load_feed(source: str, *, timeout: float = 20.0) -> Feed:
    """Fetch and parse in one go (no conditional GET: always the full feed)."""
    result = fetch_feed(source, timeout=timeout)
    if result.data is None:  # no validators were sent: only a broken server says 304
        raise FeedError(f"{display_url(result.url)} answered 304 to an unconditional request.")
    return parse_feed(result.data, base_url=result.url)


# --------------------------------------------------------------------- parse


def parse_feed(data: bytes, *, base_url: str | None = None) -> Feed:
    """Parse feed bytes (RSS 0.9x/2.0, RSS 1.0/RDF, Atom) into clean stories.

    feedparser gets a byte stream, never a string: given a string or bytes it
    may treat them as a URL or a file name and fetch or open it.
    """
    label = display_url(base_url or "The feed")
    if base_url and urlsplit(base_url).scheme not in ("http", "https"):
        base_url = None  # a file path names the feed in messages; it is no base for links
    if not data or not data.strip():
        raise FeedError(f"{label} is empty: no feed was received.")
    if _root_element(data) == "html":
        raise FeedError(
            f"{label} returned an HTML page, not a feed.", hint=html_page_hint(data, base_url)
        )
    parsed = feedparser.parse(io.BytesIO(data), sanitize_html=False, resolve_relative_uris=False)
    problem = parsed.get("bozo_exception")
    if not parsed.entries and (
        not parsed.get("version") or (parsed.get("bozo") and not isinstance(problem, _BENIGN_BOZO))
    ):
        if problem is not None:
            reason = clean_text(_bozo_reason(problem), 120)
            raise FeedError(f"{label} is not a valid feed ({reason}).")
        raise FeedError(f"{label} is not an RSS or Atom feed.")
    if parsed.get("bozo") and _is_truncated(data):
        reason = clean_text(_bozo_reason(problem), 120) if problem else "unexpected end"
        raise FeedError(f"{label} is cut short, not a complete feed ({reason}).")
    channel = parsed.feed
    feed_link = safe_url(channel.get("link"), base_url)
    if feed_link and not feed_link.startswith("http"):
        feed_link = None
    stories: list[tuple[int, FeedStory]] = []
    for index, entry in enumerate(parsed.entries):
        story = _story(entry, feed_link or base_url)
        if story is not None:
            stories.append((index, story))
    stories.sort(key=lambda pair: _newest_first(*pair))
    unique: dict[str, FeedStory] = {}
    for _, story in stories:
        unique.setdefault(story.uid, story)
    title = clean_text(channel.get("title")) or urlsplit(feed_link or "").hostname or ""
    return Feed(title=title, link=feed_link, stories=list(unique.values()))


def _is_truncated(data: bytes) -> bool:
    """No closing root tag near the end: a partial download, not a feed to send from.

    feedparser's lenient parser still finds the first items of a cut-short
    document; the last of them may be cut in the middle of its content.
    """
    root = _root_element(data)
    if root is None:
        return True
    local = re.escape(root.split(":")[-1].encode())
    return not re.search(rb"</(?:[\w.-]+:)?" + local + rb"\s*>", data[-4096:], re.I)


def _bozo_reason(problem: Exception) -> str:
    """feedparser's complaint, with the line number when the XML parser gave one."""
    get_message, get_line = (getattr(problem, n, None) for n in ("getMessage", "getLineNumber"))
    if callable(get_message) and callable(get_line):
        return f"line {get_line()}: {get_message()}"
    return str(problem) or type(problem).__name__


def _newest_first(index: int, story: FeedStory) -> tuple[int, float, int]:
    """Sort key: dated stories newest first, undated last, feed order breaks ties."""
    if story.published_at is None:
        return (1, 0.0, index)
    return (0, -story.published_at.timestamp(), index)


def _story(entry: Any, base: str | None) -> FeedStory | None:
    link = _entry_link(entry, base)
    raw_guid = plain_id(entry.get("id"))
    content_base = _content_base(entry) or link or base
    content_raw = "".join(part.get("value", "") for part in entry.get("content") or [])
    content_raw = content_raw or entry.get("summary", "")
    summary_html = clean_html(entry.get("summary", ""), content_base)
    content_html = clean_html(content_raw, content_base)
    title = clean_text(entry.get("title"))
    post_id = plain_id(entry.get("post-id"))
    if not (raw_guid or link or post_id or title or content_html):
        return None  # an empty <item/>, e.g. the tail of a truncated feed
    image_url, image_alt = _media_image(entry, content_base), None
    if image_url is None:
        image_url, image_alt = first_content_image(content_html)
    author = clean_text(entry.get("author"), 200) or None
    return FeedStory(
        uid=_uid(raw_guid, link, post_id, f"{entry.get('title', '')}\n{content_raw}"),
        title=title,
        link=link if link and len(link) <= MAX_URL_LENGTH else None,
        guid=raw_guid[:MAX_GUID_LENGTH] if raw_guid else None,
        author=author,
        summary_html=summary_html,
        content_html=content_html,
        image_url=image_url,
        image_alt=image_alt,
        published_at=_published(entry),
    )


def _entry_link(entry: Any, base: str | None) -> str | None:
    """The story's web page; a guid only counts when it is itself a URL."""
    candidates = [
        link.get("href")
        for link in entry.get("links") or []
        if link.get("rel", "alternate") == "alternate"
    ]
    if not candidates and entry.get("link") and not entry.get("guidislink"):
        candidates.append(entry.get("link"))
    guid = entry.get("id") or ""
    if not candidates and entry.get("guidislink") and guid.startswith(("http://", "https://")):
        candidates.append(guid)
    for candidate in candidates:
        url = safe_url(candidate, base)
        if url and urlsplit(url).scheme in ("http", "https"):
            return url
    return None


def _content_base(entry: Any) -> str | None:
    """An Atom entry's xml:base, when the feed declares one."""
    for detail in [*(entry.get("content") or []), entry.get("summary_detail") or {}]:
        base = safe_url(detail.get("base"))
        if base and base.startswith("http"):
            return base
    return None


def _uid(guid: str | None, link: str | None, post_id: str | None, raw: str) -> str:
    """guid, else normalised link, else WordPress post-id, else a content hash.

    The hash is of the raw title and content, so it does not change when
    this module's cleaning does (it still changes when the post is edited).
    """
    if guid:
        prefix, value = "guid", guid
    elif link:
        prefix, value = "link", normalize_link(link)
    elif post_id:
        prefix, value = "post", post_id
    else:
        return f"hash:{hashlib.sha256(raw.encode()).hexdigest()}"
    uid = f"{prefix}:{value}"
    if len(uid) > MAX_UID_LENGTH:
        uid = f"{prefix}:sha256:{hashlib.sha256(value.encode()).hexdigest()}"
    return uid


def _published(entry: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            try:
                year, month, day, hour, minute, second = value[:6]
                return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
            except (TypeError, ValueError, OverflowError):
                continue
    return None


def _media_image(entry: Any, base: str | None) -> str | None:
    """An image from media:content, media:thumbnail or an image enclosure.

    Jetpack puts the author's Gravatar in media:content on every item; it is
    never the story image.
    """
    enclosures = [
        {"url": link.get("href"), "type": link.get("type")}
        for link in entry.get("links") or []
        if link.get("rel") == "enclosure"
    ]
    media = [*(entry.get("media_content") or []), *(entry.get("media_thumbnail") or [])]
    for item in [*media, *enclosures]:
        kind = (item.get("type") or "").lower()
        medium = (item.get("medium") or "").lower()
        if (kind and not kind.startswith("image/")) or (medium and medium != "image"):
            continue
        url = safe_url(item.get("url"), base)
        if url and url.startswith("http") and len(url) <= MAX_URL_LENGTH and not is_avatar(url):
            return url
    return None
