"""Feeds that fail the way real servers and real users make them fail (real HTTP server).

- a server that trickles its answer must not hold a fetch past its deadline;
- an HTML page given as the feed URL names the feed to try instead;
- a feed URL typed without its scheme is not silently read as a file path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.errors import FeedError
from newsletter.issues.feed import load_feed, parse_feed
from newsletter.issues.fetch import fetch_feed
from tests.support.feedserver import FeedServer

FEEDS = Path(__file__).resolve().parents[1] / "data" / "feeds"
RSS_290 = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>Slow</title>'
    b"<item><title>One</title><guid>one</guid></item>" + b" " * 150 + b"</channel></rss>"
)[:290]


def one_line(error: pytest.ExceptionInfo[FeedError], *needles: str) -> str:
    message = str(error.value)
    assert message.splitlines() == [message] and "Traceback" not in message
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)
    return message


# ---- a deadline over the whole fetch -------------------------------------------------

TRICKLE = 0.1  # seconds per byte: far below the per-read timeout, so only the deadline stops it


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_trickling_server_cannot_hold_the_fetch_past_its_deadline(headers_too: bool) -> None:
    """11.5: 290 bytes at one byte a second took 294 s against a 60 s cap."""
    with FeedServer() as server:
        server.route("/feed", body=RSS_290, trickle=TRICKLE, trickle_headers=headers_too)
        whole_trickle = len(RSS_290) * TRICKLE  # 29 s, more with the headers
        started = time.monotonic()
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/feed"), timeout=1.0, deadline=2.0)
        elapsed = time.monotonic() - started
    one_line(error, "timed out", "longer than 2 seconds")
    assert elapsed < whole_trickle / 2  # the outcome: it gave up, it did not wait it out


def test_the_default_deadline_is_three_times_the_timeout() -> None:
    with FeedServer() as server:
        server.route("/feed", body=RSS_290, trickle=TRICKLE, trickle_headers=True)
        started = time.monotonic()
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/feed"), timeout=0.5)
        elapsed = time.monotonic() - started
    one_line(error, "longer than 1.5 seconds")
    assert elapsed < len(RSS_290) * TRICKLE / 2


def test_a_slow_feed_within_the_deadline_is_read_whole() -> None:
    with FeedServer() as server:
        server.route("/feed", body=RSS_290[:40], trickle=0.01, etag='"v1"')
        result = fetch_feed(server.url("/feed"), timeout=2.0, deadline=30.0)
    assert result.data == RSS_290[:40] and result.etag == '"v1"'


def test_the_deadline_spans_redirects() -> None:
    """Each hop's connection draws on the same budget."""
    with FeedServer() as server:
        server.redirect("/old", server.url("/feed"))
        server.route("/feed", body=RSS_290, trickle=TRICKLE)
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/old"), timeout=1.0, deadline=1.5)
    one_line(error, "longer than 1.5 seconds")


# ---- an HTML page as the feed URL ----------------------------------------------------

HOME = b"""<!DOCTYPE html><html lang="en-US"><head><title>AASR</title>
<link rel="stylesheet" href="/style.css">
<link rel="alternate" type="application/rss+xml" title="AASR &raquo; Feed" href="/feed/">
<link rel="alternate" type="application/rss+xml" title="Comments" href="/comments/feed/">
</head><body><h1>Follow AASR</h1></body></html>"""
PLAIN_HOME = b"<!DOCTYPE html><html><head><title>Home</title></head><body>Hi</body></html>"


def page_error(
    page: bytes,
    content_type: str,
    path: str = "/feed/",
    *,
    ask: str | None = None,
    load: Callable[[str], object] = fetch_feed,
) -> tuple[pytest.ExceptionInfo[FeedError], str]:
    """Serve `page` at `path` and read `ask` (by default that path) as the feed: the error,
    and the URL of the server's /feed/, which a hint may name."""
    with FeedServer() as server:
        server.route(path, body=page, content_type=content_type)
        with pytest.raises(FeedError) as error:
            load(server.url(path if ask is None else ask))
        return error, server.url("/feed/")


def test_a_home_page_with_a_feed_link_names_that_feed() -> None:
    error, feed = page_error(HOME, "text/html; charset=UTF-8", "/")
    one_line(error, "returned an HTML page, not a feed")
    hint = error.value.hint or ""
    assert "home page" in hint and f"NEWSLETTER_FEED_URL={feed}" in hint
    assert "comments" not in hint


def test_a_home_page_without_a_feed_link_suggests_slash_feed() -> None:
    error, feed = page_error(PLAIN_HOME, "text/html", "/", ask="")  # no path: still the home page
    one_line(error, "HTML page")
    hint = error.value.hint or ""
    assert "home page" in hint and feed in hint


def test_another_page_with_a_feed_link_names_it_absolute() -> None:
    page = HOME.replace(b'href="/feed/"', b'href="https://endseclusion.org/feed/"')
    error, _ = page_error(page, "text/html", "/about/")
    hint = error.value.hint or ""
    assert hint.startswith("The page names its feed")
    assert "NEWSLETTER_FEED_URL=https://endseclusion.org/feed/" in hint


def test_a_hostile_feed_link_is_never_suggested() -> None:
    page = HOME.replace(b'href="/feed/"', b'href="javascript:alert(1)"').replace(
        b"/comments/feed/", b"data:text/html,x"
    )
    error, _ = page_error(page, "text/html", "/x/")
    hint = error.value.hint or ""
    assert "javascript" not in hint and "data:" not in hint and "challenge" in hint


def test_a_challenge_page_keeps_its_hint() -> None:
    error, _ = page_error((FEEDS / "challenge.html").read_bytes(), "text/html")
    assert "challenge" in (error.value.hint or "")


def test_a_home_page_served_as_xml_is_caught_by_the_parser_with_the_same_hint() -> None:
    error, feed = page_error(HOME, "application/xml", "/", load=load_feed)
    one_line(error, "returned an HTML page")
    assert f"NEWSLETTER_FEED_URL={feed}" in (error.value.hint or "")
    with pytest.raises(FeedError) as error:
        parse_feed(HOME, base_url="saved-home.html")  # a file: nothing to resolve against
    assert "NEWSLETTER_FEED_URL" not in (error.value.hint or "")


# ---- a feed URL without its scheme ---------------------------------------------------


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder: a relative feed source names no file by accident."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fetch_error(source: str) -> pytest.ExceptionInfo[FeedError]:
    with pytest.raises(FeedError) as error:
        fetch_feed(source)
    return error


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    "given",
    [
        "endseclusion.org/feed",
        "endseclusion.org/feed/",
        "www.endseclusion.org",
        "news.example.co.uk/rss",
    ],
)
def test_a_url_without_a_scheme_is_named_as_such(given: str) -> None:
    error = fetch_error(given)
    message = one_line(error)
    assert message == f"{given} is not a file here; did you mean https://{given} ?"
    assert "scheme" in (error.value.hint or "")


def test_a_host_and_port_without_a_scheme() -> None:
    assert one_line(fetch_error("localhost:8000/feed")) == (
        "localhost:8000/feed has no scheme and is no file path; "
        "did you mean http://localhost:8000/feed ?"
    )


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize("given", ["feed.xml", "feeds/site.rss", "nope"])
def test_a_missing_file_is_still_a_missing_file(given: str) -> None:
    assert one_line(fetch_error(given)).startswith("Feed file not found")


def test_a_file_whose_name_looks_like_a_host_is_still_read(here: Path) -> None:
    (here / "endseclusion.org").mkdir()
    (here / "endseclusion.org" / "feed").write_bytes(RSS_290)
    assert fetch_feed("endseclusion.org/feed").data == RSS_290
