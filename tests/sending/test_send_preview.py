"""`send --preview FILE` and `send --to ADDRESS` as staff run them: a real subprocess, the
feed on a real HTTP server (ETag, 304), the real aiosmtpd server (AUTH, refusals).

Both record nothing, so both fetch the feed unconditionally: after a normal send the
server answers a conditional GET with 304 and there would be nothing to show. Both fail
loudly (exit 1, one line) when nothing is written or sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.feedserver import FeedServer
from tests.support.helpers import SAMPLE_FEED, one_error_line, site_database, table_dump, write_site
from tests.support.helpers import run_cli as run
from tests.support.smtpserver import SMTPServer

pytestmark = pytest.mark.usefixtures("db_backend")

STAFF = "staff@endseclusion.org"


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    with FeedServer() as server:
        server.route("/feed/", body=SAMPLE_FEED.read_bytes(), etag='"v1"')
        yield server


@pytest.fixture
def site(tmp_path: Path, feed_server: FeedServer) -> Path:
    """A working folder whose feed is served over HTTP, with four readers."""
    return write_site(tmp_path, feed_server.url("/feed/"))


@pytest.fixture
def sent_site(site: Path) -> Path:
    """After a normal send: the database holds the feed's ETag, the server answers 304."""
    done = run(site, "send")
    assert done.returncode == 0, done.stderr
    assert len(list((site / "outbox").glob("*.eml"))) == 4
    again = run(site, "send")
    assert "has not changed" in again.stdout  # the 304 this is about
    return site


def dump(site: Path) -> dict[str, list[tuple[object, ...]]]:
    with site_database(site) as engine:
        return table_dump(engine)


def down_url() -> str:
    """An SMTP URL on a port where nothing listens any more: the connection is refused."""
    probe = SMTPServer().start()
    url = probe.url
    probe.stop()
    return url


def test_preview_after_a_send_fetches_the_feed_again(
    sent_site: Path, feed_server: FeedServer
) -> None:
    """10.2: the preview was silently not written after a 304."""
    before = dump(sent_site)
    result = run(sent_site, "send", "--preview", "preview.html")
    assert result.returncode == 0, result.stderr
    assert "has not changed" not in result.stdout
    assert "If-None-Match" not in feed_server.requests[-1][1]
    html = (sent_site / "preview.html").read_text()
    assert "Supporting Youth in Residential Care" in html
    assert "Preview written to preview.html" in result.stdout
    assert "No new stories since the last issue: the preview shows the feed's latest 10:" in (
        result.stdout
    )
    assert dump(sent_site) == before


def test_test_copy_after_a_send_fetches_the_feed_again(
    sent_site: Path, feed_server: FeedServer, smtp_server: SMTPServer
) -> None:
    """10.2: the test copy was silently not sent after a 304."""
    before = dump(sent_site)
    result = run(sent_site, "send", "--to", STAFF, NEWSLETTER_SMTP_URL=smtp_server.url)
    assert result.returncode == 0, result.stderr
    assert smtp_server.recipients() == [STAFF]
    assert f"Test copy sent to {STAFF}" in result.stdout
    assert "If-None-Match" not in feed_server.requests[-1][1]
    assert dump(sent_site) == before


def test_test_copy_with_a_wrong_password_fails_loudly(
    sent_site: Path, make_smtp_server: Callable[..., SMTPServer]
) -> None:
    """10.2: `--to` with a wrong SMTP password exited 0."""
    server = make_smtp_server(auth=("news", "right-password"))
    before = dump(sent_site)
    wrong = server.url.replace("right-password", "wrong-password")
    result = run(sent_site, "send", "--to", STAFF, NEWSLETTER_SMTP_URL=wrong)
    error = one_error_line(result)
    assert f"the test copy to {STAFF} was not sent" in error
    assert "refused the login for 'news'" in error and "535" in error
    assert "user name and password in NEWSLETTER_SMTP_URL" in error
    assert "Deliveries stay pending" not in error  # a test copy has no deliveries
    assert "wrong-password" not in result.stdout + result.stderr
    assert "Test copy sent" not in result.stdout
    assert server.recipients() == []
    assert dump(sent_site) == before


@pytest.mark.parametrize(
    "refusal",
    [{"rcpt_replies": {"staff@": "550 5.1.1 No such user"}}, {"data_reply": "554 5.7.1 Spam"}],
    ids=["rcpt-550", "data-554"],
)
def test_test_copy_refused_by_the_server_fails_loudly(
    site: Path, make_smtp_server: Callable[..., SMTPServer], refusal: dict[str, object]
) -> None:
    server = make_smtp_server(**refusal)
    before = dump(site)
    result = run(site, "send", "--to", STAFF, NEWSLETTER_SMTP_URL=server.url)
    assert f"the test copy to {STAFF} was refused" in one_error_line(result)
    assert dump(site) == before


def test_test_copy_to_an_unreachable_server_fails_loudly(site: Path) -> None:
    before = dump(site)
    result = run(site, "send", "--to", STAFF, NEWSLETTER_SMTP_URL=down_url())
    error = one_error_line(result)
    assert f"the test copy to {STAFF} was not sent" in error
    assert "refused the connection" in error
    assert "Deliveries stay pending" not in error
    assert dump(site) == before


def test_a_feed_without_stories_fails_loudly(site: Path, feed_server: FeedServer) -> None:
    """Nothing to show is an error, not a quiet exit 0 with no file and no copy."""
    feed_server.route(
        "/feed/",
        body=b"<?xml version='1.0'?><rss version='2.0'><channel><title>AASR</title>"
        b"<link>https://endseclusion.org/</link><description>x</description></channel></rss>",
    )
    result = run(site, "send", "--preview", "preview.html")
    assert "no stories" in one_error_line(result)
    assert not (site / "preview.html").exists()
    copy = run(site, "send", "--to", STAFF)
    assert "no stories" in one_error_line(copy)
    assert not (site / "outbox").exists()
