"""Fetching feeds from a real local HTTP server (no mocks): validators, conditional requests,
status codes, challenge pages, timeouts, redirects and gzip bodies."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from newsletter.errors import FeedError
from newsletter.issues.feed import load_feed, parse_feed
from newsletter.issues.fetch import DEFAULT_USER_AGENT, fetch_feed
from tests.support.feedserver import FeedServer, SilentServer, closed_port_url
from tests.support.helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
FEEDS = Path(__file__).resolve().parents[1] / "data" / "feeds"
SAMPLE = ROOT / "examples" / "aasr-feed.xml"
RSS = SAMPLE.read_bytes()
MODIFIED = "Mon, 18 Mar 2024 14:00:00 GMT"


def test_http_200_returns_validators_and_sends_a_descriptive_user_agent() -> None:
    with FeedServer() as server:
        server.route("/feed/", body=RSS, etag='"v1"', last_modified=MODIFIED)
        result = fetch_feed(server.url("/feed/"))
        assert result.data == RSS
        assert result.url == server.url("/feed/")
        assert (result.etag, result.last_modified) == ('"v1"', MODIFIED)
        _, headers = server.requests[0]
        assert headers["User-Agent"] == DEFAULT_USER_AGENT
        assert "If-None-Match" not in headers


def test_http_conditional_request_answered_304() -> None:
    with FeedServer() as server:
        server.route("/feed/", body=RSS, etag='"v1"', last_modified=MODIFIED)
        result = fetch_feed(server.url("/feed/"), etag='"v1"', last_modified=MODIFIED)
        assert result.data is None
        assert result.etag == '"v1"' and result.last_modified == MODIFIED
        _, headers = server.requests[0]
        assert headers["If-None-Match"] == '"v1"'
        assert headers["If-Modified-Since"] == MODIFIED
        changed = fetch_feed(server.url("/feed/"), etag='"v0"')
        assert changed.data == RSS


def test_http_404_names_the_status() -> None:
    with FeedServer() as server, pytest.raises(FeedError) as error:
        fetch_feed(server.url("/missing"))
    assert_one_line_error(error, "404")


def test_http_challenge_page_is_not_a_feed() -> None:
    page = (FEEDS / "challenge.html").read_bytes()
    with FeedServer() as server:
        server.route("/feed/", body=page, content_type="text/html; charset=UTF-8")
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/feed/"))
        assert_one_line_error(error, "returned an HTML page, not a feed")
        assert error.value.hint and "challenge" in error.value.hint
        # the same page under a feed content type is still caught by the parser
        server.route("/xml", body=page, content_type="application/rss+xml")
        with pytest.raises(FeedError) as error:
            load_feed(server.url("/xml"))
        assert_one_line_error(error, "returned an HTML page, not a feed")
        # a 403 challenge names the status and hints at the cause
        server.route("/blocked", status=403, body=page, content_type="text/html")
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/blocked"))
        assert_one_line_error(error, "403")
        assert error.value.hint and "challenge" in error.value.hint


def test_http_feed_served_as_text_html_is_accepted() -> None:
    with FeedServer() as server:
        server.route("/feed", body=RSS, content_type="text/html")
        assert fetch_feed(server.url("/feed")).data == RSS


def test_http_server_that_never_answers_times_out() -> None:
    with SilentServer() as silent, pytest.raises(FeedError) as error:
        fetch_feed(silent.url(), timeout=0.5)
    assert_one_line_error(error, "timed out")


def test_http_closed_port_is_refused() -> None:
    with pytest.raises(FeedError) as error:
        fetch_feed(closed_port_url(), timeout=2)
    assert_one_line_error(error, "refused")


def test_http_unknown_host() -> None:
    with pytest.raises(FeedError) as error:
        fetch_feed("http://no-such-host.invalid/feed", timeout=2)
    assert_one_line_error(error, "cannot reach")


def test_http_redirects_are_followed() -> None:
    with FeedServer() as server:
        server.route("/new-feed/", body=RSS, etag='"v2"')
        server.redirect("/feed", server.url("/new-feed/"))
        server.redirect("/old", "/feed", status=302)
        result = fetch_feed(server.url("/old"))
        assert result.data == RSS
        assert result.url == server.url("/new-feed/")
        assert result.etag == '"v2"'
        assert parse_feed(result.data, base_url=result.url).stories[0].uid == (
            "guid:https://endseclusion.org/?p=4127"
        )


def test_http_redirect_to_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "local.xml"
    target.write_bytes(RSS)
    with FeedServer() as server:
        server.redirect("/feed", target.as_uri())
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/feed"))
    assert_one_line_error(error)


def test_http_gzip_body_is_decompressed() -> None:
    with FeedServer() as server:
        server.route("/feed", body=RSS, gzip=True)
        result = fetch_feed(server.url("/feed"))
        assert result.data == RSS
        _, headers = server.requests[0]
        assert "gzip" in headers["Accept-Encoding"]


def test_http_corrupt_gzip_is_a_feed_error() -> None:
    with FeedServer() as server:
        server.route("/feed", body=RSS, headers={"Content-Encoding": "gzip"})
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/feed"))
    assert_one_line_error(error, "gzip")


def test_http_empty_body_is_a_feed_error() -> None:
    with FeedServer() as server:
        server.route("/feed", body=b"")
        with pytest.raises(FeedError) as error:
            load_feed(server.url("/feed"))
    assert_one_line_error(error, "empty")


def test_http_oversized_gzip_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("newsletter.issues.fetch.MAX_FEED_BYTES", 64 * 1024)
    bomb = b"<rss>" + b" " * (1024 * 1024)
    with FeedServer() as server:
        server.route("/feed", body=bomb, gzip=True)
        assert len(gzip.compress(bomb)) < 64 * 1024
        with pytest.raises(FeedError) as error:
            fetch_feed(server.url("/feed"))
    assert_one_line_error(error, "larger than")


def test_load_feed_over_http_resolves_relative_links_against_the_feed() -> None:
    data = b"""<rss version="2.0"><channel><title>t</title>
    <item><title>x</title><link>/posts/x/</link><description>&lt;a href="y"&gt;y&lt;/a&gt;
    </description></item></channel></rss>"""
    with FeedServer() as server:
        server.route("/blog/feed", body=data)
        parsed = load_feed(server.url("/blog/feed"))
    (only,) = parsed.stories
    assert only.link == server.url("/posts/x/")
    assert f'<a href="{server.url("/posts/x/y")}">y</a>' in only.content_html


def test_https_feed_is_fetched_when_its_certificate_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real TLS server: SSL_CERT_FILE (a private CA, as the README documents) is honoured."""
    with FeedServer(tls=True, scratch=tmp_path) as server:
        server.route("/feed", body=RSS, content_type="application/rss+xml")
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        result = fetch_feed(server.url("/feed"))
    assert result.data == RSS
    assert result.url.startswith("https://127.0.0.1:")


def test_https_feed_with_an_untrusted_certificate_is_one_line_error(tmp_path: Path) -> None:
    with FeedServer(tls=True, scratch=tmp_path) as server:
        server.route("/feed", body=RSS, content_type="application/rss+xml")
        with pytest.raises(FeedError) as caught:
            fetch_feed(server.url("/feed"))
    assert_one_line_error(caught, "TLS error", "CERTIFICATE_VERIFY_FAILED")
