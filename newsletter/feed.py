"""Fetch and parse the site's feed into clean `FeedStory` values (no DB writes).

CONTRACT (used by newsletter.issues; keep these names and fields):

    fetch_feed(source, *, timeout=20.0, etag=None, last_modified=None) -> FetchResult
    parse_feed(data: bytes, *, base_url: str | None = None) -> Feed
    load_feed(source, *, timeout=20.0) -> Feed    # fetch + parse, no conditional GET

Every failure is a one-line `FeedError`: a broken or missing feed must stop a
send before anything is recorded, never clear what was sent before.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser

from newsletter.errors import FeedError
from newsletter.sanitize import (
    clean_html,
    clean_text,
    display_url,
    first_content_image,
    is_avatar,
    normalize_link,
    plain_id,
    safe_url,
)

DEFAULT_USER_AGENT = "newsletter/0.1 (RSS-to-email newsletter)"
MAX_FEED_BYTES = 20 * 1024 * 1024
MAX_UID_LENGTH = 500
MAX_GUID_LENGTH = 1000  # the Story table's column sizes
MAX_URL_LENGTH = 2000
_CHUNK = 64 * 1024
_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)
_HTML_HINT = (
    "A security plugin or CDN probably answered with a challenge page: "
    "allow this client's User-Agent or IP for the feed URL."
)
# feedparser flags these yet parses fine: not a reason to reject a feed.
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


@dataclass(frozen=True)
class FetchResult:
    data: bytes | None  # None when the server answered 304 Not Modified
    url: str  # final URL (after redirects) or the file path
    etag: str | None = None
    last_modified: str | None = None


# --------------------------------------------------------------------- fetch


def fetch_feed(
    source: str,
    *,
    timeout: float = 20.0,
    etag: str | None = None,
    last_modified: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
) -> FetchResult:
    """The raw bytes of a feed from an http(s) URL, a file:// URL or a path.

    `timeout` bounds the connection and each read; the whole download gets
    three times that, so a server that trickles bytes cannot hang a cron job.
    """
    source = (source or "").strip()
    if not source:
        raise FeedError("No feed given: set NEWSLETTER_FEED_URL to a URL or a file path.")
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(source, timeout, etag, last_modified, user_agent)
    if scheme == "file":
        return _read_file(Path(urllib.request.url2pathname(urlsplit(source).path)))
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise FeedError(f"Unsupported feed address {source!r}: use http(s) or a file path.")
    return _read_file(Path(source))


def load_feed(source: str, *, timeout: float = 20.0) -> Feed:
    """Fetch and parse in one go (no conditional GET: always the full feed)."""
    result = fetch_feed(source, timeout=timeout)
    if result.data is None:  # no validators were sent: only a broken server says 304
        raise FeedError(f"{display_url(result.url)} answered 304 to an unconditional request.")
    return parse_feed(result.data, base_url=result.url)


def _read_file(path: Path) -> FetchResult:
    if path.is_dir():
        raise FeedError(f"{path} is a directory, not a feed file.")
    if not path.exists():
        raise FeedError(f"Feed file not found: {path}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FEED_BYTES + 1)
    except OSError as exc:
        raise FeedError(f"Cannot read feed file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FEED_BYTES:
        raise _too_large(path)
    return FetchResult(data=data, url=str(path))


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never to file:, ftp: or anything else."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise FeedError(f"{display_url(req.full_url)} redirected to a non-HTTP address.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_http(
    url: str, timeout: float, etag: str | None, last_modified: str | None, user_agent: str
) -> FetchResult:
    shown = display_url(url)
    headers = {"User-Agent": user_agent, "Accept": _ACCEPT, "Accept-Encoding": "gzip, deflate"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    deadline = time.monotonic() + 3 * timeout
    try:
        request = urllib.request.Request(url, headers=headers)
        with opener.open(request, timeout=timeout) as response:
            final_url = response.geturl()
            raw = _read_capped(response, deadline, shown)
            data = _decode_body(raw, response.headers.get("Content-Encoding", ""), shown)
            answer_etag = response.headers.get("ETag")
            answer_modified = response.headers.get("Last-Modified")
            content_type = response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 304:
            return FetchResult(
                data=None,
                url=exc.geturl() or url,
                etag=exc.headers.get("ETag") or etag,
                last_modified=exc.headers.get("Last-Modified") or last_modified,
            )
        html_page = exc.headers.get_content_type() == "text/html" if exc.headers else False
        raise FeedError(
            f"{shown} answered HTTP {exc.code} {exc.reason or ''}".rstrip() + ".",
            hint=_HTML_HINT if html_page and exc.code in (403, 429, 503) else None,
        ) from None
    except urllib.error.URLError as exc:
        raise FeedError(f"Cannot reach {shown}: {_describe(exc.reason, timeout)}") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise FeedError(f"Cannot read {shown}: {_describe(exc, timeout)}") from None
    except ValueError as exc:
        raise FeedError(f"Invalid feed URL {shown}: {exc}") from None
    if content_type == "text/html" and _root_element(data) not in _FEED_ROOTS:
        raise FeedError(f"{shown} returned an HTML page, not a feed.", hint=_HTML_HINT)
    return FetchResult(data=data, url=final_url, etag=answer_etag, last_modified=answer_modified)


def _read_capped(response: Any, deadline: float, shown: str) -> bytes:
    """The body, refusing anything over MAX_FEED_BYTES or past the deadline."""
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_FEED_BYTES:
        raise _too_large(shown)
    buffer = io.BytesIO()
    while chunk := response.read(_CHUNK):
        buffer.write(chunk)
        if buffer.tell() > MAX_FEED_BYTES:
            raise _too_large(shown)
        if time.monotonic() > deadline:
            raise FeedError(f"Cannot read {shown}: the download is too slow (timed out).")
    return buffer.getvalue()


def _decode_body(raw: bytes, encoding: str, shown: str) -> bytes:
    """Undo gzip/deflate, with the size cap applied to the *decompressed* body."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise FeedError(f"{shown} used an unsupported Content-Encoding: {encoding}.")
    wbits = zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS
    try:
        try:
            inflater = zlib.decompressobj(wbits)
            data = inflater.decompress(raw, MAX_FEED_BYTES + 1)
        except zlib.error:
            if encoding != "deflate":
                raise
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no header
            data = inflater.decompress(raw, MAX_FEED_BYTES + 1)
    except zlib.error as exc:
        raise FeedError(f"{shown} sent a corrupt {encoding} body: {exc}.") from None
    if len(data) > MAX_FEED_BYTES:
        raise _too_large(shown)
    return data


def _describe(reason: object, timeout: float) -> str:
    """A short human reason for a network failure."""
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} seconds (timed out)."
    if isinstance(reason, socket.gaierror):
        return "the host name could not be resolved (DNS lookup failed)."
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused."
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({getattr(reason, 'reason', None) or 'handshake failed'})."
    if isinstance(reason, OSError) and reason.strerror:
        return f"{reason.strerror}."
    return clean_text(str(reason) or type(reason).__name__) + "."


def _too_large(what: object) -> FeedError:
    return FeedError(f"{what} is larger than {MAX_FEED_BYTES // (1024 * 1024)} MB.")


# --------------------------------------------------------------------- parse

_FEED_ROOTS = frozenset({"rss", "feed", "rdf", "rdf:rdf", "channel"})
_PROLOG = re.compile(
    rb"^(?:\s+|<\?[^>]*\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)*", re.S | re.I
)
_ROOT = re.compile(rb"<([A-Za-z][\w:.-]*)")


def _root_element(data: bytes) -> str | None:
    """The document's root element name, lower-cased (None if there is none)."""
    head = data[:65536].removeprefix(b"\xef\xbb\xbf")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16: decode to sniff
        head = head.decode("utf-16", errors="ignore").encode("utf-8", errors="ignore")
    match = _ROOT.match(head, _PROLOG.match(head).end())  # type: ignore[union-attr]
    return match.group(1).decode("ascii").lower() if match else None


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
        raise FeedError(f"{label} returned an HTML page, not a feed.", hint=_HTML_HINT)
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
                return datetime(*value[:6], tzinfo=UTC)
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
