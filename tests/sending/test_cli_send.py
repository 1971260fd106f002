"""`newsletter send` and `status` as a user runs them: a real subprocess, a real SQLite file,
a real SMTP server or the outbox, feeds from files and from a real HTTP server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.feedserver import FeedServer
from tests.support.helpers import SAMPLE_FEED, many, site_database, table_dump, write_site
from tests.support.helpers import run_cli as run
from tests.support.smtpserver import SMTPServer

pytestmark = pytest.mark.usefixtures("db_backend")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A working folder as a user would have it: .env, the feed, a database with readers."""
    shutil.copy(SAMPLE_FEED, tmp_path / "feed.xml")
    return write_site(tmp_path, "feed.xml")


def dump(site: Path) -> dict[str, list[tuple[object, ...]]]:
    with site_database(site) as engine:
        return table_dump(engine)


def assert_clean_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_send_to_the_outbox_then_nothing_new(site: Path) -> None:
    result = run(site, "send")
    assert result.returncode == 0, result.stderr
    assert "Sent issue 1 to 4 subscribers in " in result.stdout
    assert "outbox folder" in result.stdout
    assert len(list((site / "outbox").glob("*.eml"))) == 4
    again = run(site, "send")
    assert again.returncode == 0
    assert "no new stories" in again.stdout
    assert len(list((site / "outbox").glob("*.eml"))) == 4
    status = run(site, "status")
    assert status.returncode == 0
    assert "active" in status.stdout and "4 sent" in status.stdout


def test_send_over_smtp(site: Path, smtp_server: SMTPServer) -> None:
    result = run(site, "send", NEWSLETTER_SMTP_URL=smtp_server.url)
    assert result.returncode == 0, result.stderr
    assert sorted(smtp_server.recipients()) == many(4)
    assert f"SMTP server smtp://127.0.0.1:{smtp_server.port}" in result.stdout


def test_dry_run_lists_and_writes_nothing(site: Path) -> None:
    before = dump(site)
    result = run(site, "send", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "10 stories would go in the next issue" in result.stdout
    assert "4 active subscribers would receive it" in result.stdout
    assert "Supporting Youth in Residential Care" in result.stdout
    assert dump(site) == before
    assert not (site / "outbox").exists()


def test_preview_writes_the_html(site: Path) -> None:
    before = dump(site)
    result = run(site, "send", "--preview", "preview.html")
    assert result.returncode == 0, result.stderr
    html = (site / "preview.html").read_text()
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<html")
    assert "%%UNSUBSCRIBE_URL%%" not in html
    assert dump(site) == before


def test_test_copy_to_one_address_is_recorded_nowhere(site: Path, smtp_server: SMTPServer) -> None:
    before = dump(site)
    result = run(
        site, "send", "--to", "staff@endseclusion.org", NEWSLETTER_SMTP_URL=smtp_server.url
    )
    assert result.returncode == 0, result.stderr
    assert smtp_server.recipients() == ["staff@endseclusion.org"]
    assert dump(site) == before
    # The real send still goes to everyone afterwards.
    run(site, "send", NEWSLETTER_SMTP_URL=smtp_server.url)
    assert len(smtp_server.recipients()) == 5


def test_baseline_then_nothing_to_send(site: Path) -> None:
    result = run(site, "send", "--baseline")
    assert result.returncode == 0 and "Recorded 10 stories" in result.stdout
    assert "no new stories" in run(site, "send").stdout
    assert not (site / "outbox").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, ["feed"]),  # missing file
        (
            b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
            b"<body>Checking your browser</body></html>",
            ["HTML page"],
        ),
        (b"<?xml version='1.0'?><rss><channel><title>x</title><item><title>a", ["feed"]),
        (b"", ["empty"]),
        (bytes(range(256)) * 4, ["feed"]),
    ],
    ids=["missing", "html-page", "broken-xml", "empty", "binary"],
)
def test_bad_feed_files(site: Path, content: bytes | None, words: list[str]) -> None:
    feed = site / "feed.xml"
    if content is None:
        feed.unlink()
    else:
        feed.write_bytes(content)
    before = dump(site)
    result = run(site, "send")
    assert_clean_error(result, *words)
    assert dump(site) == before
    assert not (site / "outbox").exists()


def test_html_challenge_page_over_http(site: Path) -> None:
    with FeedServer() as server:
        server.route(
            "/feed/",
            body=b"<!DOCTYPE html><html><body>Attention Required! | Cloudflare</body></html>",
            content_type="text/html; charset=UTF-8",
        )
        before = dump(site)
        result = run(site, "send", NEWSLETTER_FEED_URL=server.url("/feed/"))
    assert_clean_error(result, "HTML page")
    assert dump(site) == before


def test_feed_over_http_and_not_modified(site: Path) -> None:
    with FeedServer() as server:
        server.route("/feed/", body=SAMPLE_FEED.read_bytes(), etag='"v1"')
        first = run(site, "send", NEWSLETTER_FEED_URL=server.url("/feed/"))
        assert first.returncode == 0, first.stderr
        second = run(site, "send", NEWSLETTER_FEED_URL=server.url("/feed/"))
        assert second.returncode == 0
        assert "has not changed" in second.stdout
        assert server.requests[-1][1].get("If-None-Match") == '"v1"'


def test_unreachable_feed_url(site: Path) -> None:
    before = dump(site)
    result = run(site, "send", NEWSLETTER_FEED_URL="http://127.0.0.1:9/feed/")
    assert_clean_error(result)
    assert dump(site) == before


def test_a_failed_fetch_never_clears_what_was_sent(site: Path) -> None:
    assert run(site, "send").returncode == 0
    (site / "feed.xml").write_bytes(b"<html><body>Maintenance</body></html>")
    assert run(site, "send").returncode == 1
    shutil.copy(SAMPLE_FEED, site / "feed.xml")
    again = run(site, "send")
    assert "no new stories" in again.stdout
    assert len(list((site / "outbox").glob("*.eml"))) == 4


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"NEWSLETTER_FROM": ""}, ["NEWSLETTER_FROM"]),
        ({"NEWSLETTER_POSTAL_ADDRESS": ""}, ["NEWSLETTER_POSTAL_ADDRESS"]),
        ({"NEWSLETTER_FEED_URL": ""}, ["NEWSLETTER_FEED_URL"]),
        ({"NEWSLETTER_SMTP_URL": "mail.example.org"}, ["NEWSLETTER_SMTP_URL"]),
        ({"NEWSLETTER_FROM": "nobody"}, ["NEWSLETTER_FROM"]),
    ],
)
def test_missing_or_malformed_settings(site: Path, env: dict[str, str], words: list[str]) -> None:
    before = dump(site)
    result = run(site, "send", **env)
    assert_clean_error(result, *words)
    assert dump(site) == before


def test_smtp_server_down_exits_1_and_the_next_run_resumes(site: Path) -> None:
    probe = SMTPServer().start()
    url = probe.url
    probe.stop()
    result = run(site, "send", NEWSLETTER_SMTP_URL=url)
    assert result.returncode == 1
    assert "refused the connection" in result.stderr
    assert "Traceback" not in result.stderr
    with SMTPServer() as server:
        again = run(site, "send", NEWSLETTER_SMTP_URL=server.url)
        assert again.returncode == 0, again.stderr
        assert "Resumed issue 1" in again.stdout
        assert sorted(server.recipients()) == many(4)


def test_bad_test_address(site: Path) -> None:
    result = run(site, "send", "--to", "not-an-address")
    assert_clean_error(result)


def test_not_a_database(site: Path) -> None:
    (site / "junk.db").write_bytes(b"this is not sqlite" * 100)
    result = run(site, "status", NEWSLETTER_DATABASE_URL="sqlite:///junk.db")
    assert_clean_error(result, "database")


def test_usage_error_is_exit_2(site: Path) -> None:
    assert run(site, "send", "--max-stories", "zero").returncode == 2
