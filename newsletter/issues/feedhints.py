"""What to tell a user whose feed address gives no feed: hints only, nothing is fetched here.

An HTML page instead of a feed: the feed its `<link rel="alternate">` names, a
site's `/feed/`, else a CDN's challenge page. An address without its scheme
(`example.org/feed`, `localhost:8000/feed`): did you mean https://...? fetch.py
reads the bytes and raises; the words of its advice live here.
"""

from __future__ import annotations

import contextlib
import functools
import html.parser
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from newsletter.errors import FeedError
from newsletter.issues.sanitize import display_url, safe_url

CHALLENGE_HINT = (
    "A security plugin or CDN probably answered with a challenge page: "
    "allow this client's User-Agent or IP for the feed URL."
)

# "localhost:8000/feed" parses as the scheme "localhost"
_HOST_AND_PORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*:\d{1,5}(?:[/?#]|$)")


def unsupported_address_error(source: str) -> FeedError:
    """The error for an address whose scheme is neither http(s) nor file.

    `localhost:8000/feed` has a host where the scheme should be: say so.
    """
    if _HOST_AND_PORT.match(source):
        return FeedError(
            f"{source} has no scheme and is no file path; did you mean http://{source} ?"
        )
    return FeedError(f"Unsupported feed address {source!r}: use http(s) or a file path.")


def missing_file_error(path: Path, given: str | None) -> FeedError:
    """The error for a feed file that does not exist (`given`: the address as the user wrote it).

    `example.org/feed` is read as a file path; when no such file exists and it
    reads like a web address, the error asks for its scheme.
    """
    if given is not None and _looks_like_a_web_address(given):
        return FeedError(
            f"{given} is not a file here; did you mean https://{given} ?",
            hint="A feed URL needs its scheme: set NEWSLETTER_FEED_URL=https://... "
            "(a value without one is read as a file path).",
        )
    return FeedError(f"Feed file not found: {path}")


def _looks_like_a_web_address(given: str) -> bool:
    """`endseclusion.org/feed`: a host name with a known public suffix, then a path.

    Only asked once no such file exists; `feed.xml` is no host (xml is no suffix).
    """
    host = re.split(r"[/?#]", given, maxsplit=1)[0].lower().rstrip(".")
    if host.startswith("www."):
        return True
    if "." not in host or not re.fullmatch(r"[a-z0-9.-]+", host):
        return False
    suffix = _public_suffixes().publicsuffix(host, accept_unknown=False)
    return suffix is not None and suffix != host


@functools.cache
def _public_suffixes() -> Any:
    """The Public Suffix List the publicsuffixlist package ships (loaded once, when needed)."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


_FEED_TYPES = frozenset({"application/rss+xml", "application/atom+xml", "application/rdf+xml"})


class _FeedLinks(html.parser.HTMLParser):
    """Collects the `<link rel="alternate" type="application/rss+xml" href=...>` of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "link":
            return
        values = {name.lower(): (value or "") for name, value in attrs}
        rel = values.get("rel", "").lower().split()
        kind = values.get("type", "").split(";")[0].strip().lower()
        if "alternate" in rel and kind in _FEED_TYPES and values.get("href", "").strip():
            self.hrefs.append(values["href"].strip())


def advertised_feeds(data: bytes, page_url: str | None) -> list[str]:
    """The feed URLs an HTML page advertises in its head, made absolute (http(s) only)."""
    parser = _FeedLinks()
    with contextlib.suppress(Exception):  # html.parser is lenient; a hint never fails a fetch
        parser.feed(data[:262144].decode("utf-8", errors="replace"))
        parser.close()
    base = page_url if page_url and urlsplit(page_url).scheme in ("http", "https") else None
    found: list[str] = []
    for href in parser.hrefs:
        url = safe_url(href, base)
        if url and urlsplit(url).scheme in ("http", "https") and url not in found:
            found.append(url)
    return found


def html_page_hint(data: bytes, page_url: str | None) -> str:
    """What to try when the feed URL gave an HTML page.

    The page's own `<link rel="alternate">` feed first; on a site's home page,
    its `/feed/` (where WordPress serves it); else a CDN's challenge page.
    """
    feeds = advertised_feeds(data, page_url)
    parts = urlsplit(page_url or "")
    home = parts.scheme in ("http", "https") and parts.path in ("", "/") and not parts.query
    if feeds:
        where = "That is the site's home page, not its feed; it" if home else "The page"
        return f"{where} names its feed: set NEWSLETTER_FEED_URL={display_url(feeds[0])}"
    if home:
        origin = display_url(f"{parts.scheme}://{parts.netloc}")
        return (
            "That is the site's home page, not its feed: try "
            f"NEWSLETTER_FEED_URL={origin}/feed/ (where WordPress serves it)."
        )
    return CHALLENGE_HINT
