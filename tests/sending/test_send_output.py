"""What `newsletter send` prints, as cron and staff see it: a real subprocess with its
stdout and stderr on pipes (no terminal), a real SQLite file, the real aiosmtpd server."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.helpers import (
    SAMPLE_FEED,
    deliveries,
    many,
    one_error_line,
    site_database,
    write_site,
)
from tests.support.helpers import run_cli as run
from tests.support.smtpserver import SMTPServer

pytestmark = pytest.mark.usefixtures("db_backend")

#: "in 0.4 s", "in 2 min 5 s", "in 1 h 3 min": the summary's elapsed time, never its value
ELAPSED = r"in (\d+(\.\d)? s|\d+ min \d+ s|\d+ h \d+ min)"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A working folder: .env, the feed as a file, a database with four readers."""
    shutil.copy(SAMPLE_FEED, tmp_path / "feed.xml")
    return write_site(tmp_path, "feed.xml")


def statuses(site: Path) -> dict[str, str]:
    with site_database(site) as engine:
        return deliveries(engine)


def test_a_successful_send_writes_nothing_to_stderr(site: Path, smtp_server: SMTPServer) -> None:
    """10.6: the progress label was printed on a pipe ("Issue 1"), into every cron log."""
    result = run(site, "send", NEWSLETTER_SMTP_URL=smtp_server.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    outbox = run(site, "send")  # nothing new: quiet too
    assert outbox.returncode == 0 and outbox.stderr == ""


def test_the_summary_gives_the_elapsed_time(site: Path, smtp_server: SMTPServer) -> None:
    """10.14: "Sent issue 1 to 4 subscribers in 0.3 s", then the subject and destination."""
    result = run(site, "send", NEWSLETTER_SMTP_URL=smtp_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"Sent issue 1 to 4 subscribers {ELAPSED}\.", lines[0]), lines
    assert "Supporting Youth in Residential Care" in lines[1]
    assert f"SMTP server smtp://127.0.0.1:{smtp_server.port}" in result.stdout


def test_a_resumed_issue_is_one_story(site: Path, smtp_server: SMTPServer) -> None:
    """10.8: no "Nothing new to send" before "Resumed issue 1 ... sent"."""
    probe = SMTPServer().start()
    down = probe.url
    probe.stop()
    first = run(site, "send", NEWSLETTER_SMTP_URL=down)
    assert "refused the connection" in one_error_line(first)
    assert "Sent issue" not in first.stdout
    assert re.search(r"Issue 1 stopped: 0 sent .*4 deliveries stay pending", first.stdout)

    again = run(site, "send", NEWSLETTER_SMTP_URL=smtp_server.url)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert "Nothing new to send" not in again.stdout
    lines = again.stdout.splitlines()
    assert re.fullmatch(
        rf"Resumed issue 1 \(stopped earlier\): sent to 4 more subscribers {ELAPSED}\.",
        lines[0],
    ), lines
    assert lines[-1] == "No new stories since, so no new issue."
    assert sorted(smtp_server.recipients()) == many(4)


def test_a_wrong_smtp_password_says_so_and_status_shows_it(
    site: Path, make_smtp_server: Callable[..., SMTPServer]
) -> None:
    """10.7: not "Sent issue 1 ... 0 sent" and "once the server is reachable", but what
    failed (the login, with the server's reply) and what to check; `status` shows it."""
    server = make_smtp_server(auth=("news", "right-password"))
    wrong = server.url.replace("right-password", "wrong-password")
    result = run(site, "send", NEWSLETTER_SMTP_URL=wrong)
    error = one_error_line(result)
    assert "refused the login for 'news'" in error
    assert "535" in error
    assert "user name and password in NEWSLETTER_SMTP_URL" in error
    assert "reachable" not in error
    assert "wrong-password" not in result.stdout + result.stderr
    assert "Sent issue" not in result.stdout
    assert "4 deliveries stay pending" in result.stdout
    assert server.recipients() == []
    assert set(statuses(site).values()) == {"pending"}

    status = run(site, "status")
    assert status.returncode == 0, status.stderr
    assert "4 pending" in status.stdout
    last = [line.strip() for line in status.stdout.splitlines() if "last error" in line]
    assert len(last) == 1 and "refused the login for 'news'" in last[0], status.stdout

    fixed = run(site, "send", NEWSLETTER_SMTP_URL=server.url)
    assert fixed.returncode == 0, fixed.stderr
    assert "Resumed issue 1 (stopped earlier): sent to 4 more subscribers" in fixed.stdout
    assert sorted(server.recipients()) == many(4)
    assert "last error" not in run(site, "status").stdout
