"""NEWSLETTER_ISSUE_PER=story: each new story its own issue, oldest first, crash-safe per issue.

Real `python -m newsletter send` processes, a real database, a real aiosmtpd server. The
kill -9 lands at a known point through tests/support/pausepoint (a sitecustomize that
stops the process at the N-th issue), never at a guessed moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.models import Issue, IssueStatus, Story, StoryState, table_of
from tests.support.helpers import (
    ROOT,
    add_subscribers,
    backend,
    many,
    run_cli,
    send_env,
    site_database,
)
from tests.support.smtpserver import SMTPServer

pytestmark = pytest.mark.usefixtures("db_backend")

READERS = many(3)
TITLES = ["First: the oldest story", "Second story", "Third: the newest story"]
PAUSE_HOOK = Path(__file__).resolve().parents[1] / "support" / "pausepoint"


def write_feed(path: Path, titles: list[str]) -> None:
    """A feed whose items are `titles`, oldest first in time, newest first in the file."""
    items = "".join(
        f"<item><title>{title}</title><link>https://endseclusion.org/story-{n}/</link>"
        f"<guid>https://endseclusion.org/?p={100 + n}</guid>"
        f"<pubDate>Tue, 0{n + 1} Dec 2026 09:00:00 +0000</pubDate>"
        f"<description>Summary of story {n}.</description></item>"
        for n, title in reversed(list(enumerate(titles)))
    )
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>AASR</title>'
        f"<link>https://endseclusion.org/</link>{items}</channel></rss>",
        encoding="utf-8",
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    with site_database(tmp_path) as engine:
        add_subscribers(engine, READERS)
    write_feed(tmp_path / "feed.xml", TITLES)
    return tmp_path


def env_for(site: Path, server: SMTPServer, **more: str) -> dict[str, str]:
    """`send_env` with one issue per story."""
    return send_env(site, server, **{"NEWSLETTER_ISSUE_PER": "story", **more})


def received(server: SMTPServer) -> Counter[tuple[str, str]]:
    """(recipient, subject) -> copies received."""
    return Counter(
        (rcpt, str(msg.parsed()["Subject"])) for msg in server.messages for rcpt in msg.rcpt_tos
    )


def issues(site: Path) -> list[tuple[int, str, str]]:
    with site_database(site) as engine, engine.connect() as conn:
        table = table_of(Issue)
        query = sa.select(table.c.id, table.c.subject, table.c.status).order_by(table.c.id)
        return [(int(i), str(s), str(st)) for i, s, st in conn.execute(query)]


def new_stories(site: Path) -> int:
    with site_database(site) as engine, engine.connect() as conn:
        table = table_of(Story)
        query = sa.select(sa.func.count()).where(table.c.state == StoryState.NEW)
        return int(conn.execute(query).scalar_one())


def test_three_new_stories_make_three_issues_each_reader_gets_each_once(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = env_for(site, smtp_server)
    done = run_cli(site, "send", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    # oldest first, each story's title as the subject
    assert [(subject, status) for _, subject, status in issues(site)] == [
        (title, IssueStatus.SENT) for title in TITLES
    ]
    for n in (1, 2, 3):
        assert f"Sent issue {n} to 3 subscribers" in done.stdout
    assert received(smtp_server) == Counter({(r, t): 1 for r in READERS for t in TITLES})
    # each message holds its own story only
    for msg in smtp_server.messages:
        text = msg.parsed().get_body(("plain",))
        assert text is not None
        body = text.get_content()
        assert sum(f"Summary of story {n}." in body for n in range(3)) == 1

    again = run_cli(site, "send", **env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing new to send: no new stories." in again.stdout
    assert len(smtp_server.messages) == 9


@pytest.mark.parametrize(
    ("pause_at", "rerun_says"),
    [
        ("create_issue:3", "Sent issue 3 to 3 subscribers"),  # issue 3 not made yet
        ("deliver:3", "Resumed issue 3 (stopped earlier): sent to 3 more subscribers"),
    ],
)
def test_kill_9_between_second_and_third_issue_then_rerun_sends_exactly_the_rest(
    site: Path, smtp_server: SMTPServer, pause_at: str, rerun_says: str
) -> None:
    marker = site / "paused"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        env_for(site, smtp_server),
        NEWSLETTER_TEST_PAUSE_AT=pause_at,
        NEWSLETTER_TEST_PAUSE_FILE=str(marker),
        PYTHONPATH=os.pathsep.join([str(PAUSE_HOOK), str(ROOT)]),
    )
    victim = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send"],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # waits for a point in the program, not for time
            assert victim.poll() is None, "the send ended before the pause point"
            assert time.monotonic() < deadline, "the send never reached the pause point"
            time.sleep(0.05)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)

    first_two = Counter({(r, t): 1 for r in READERS for t in TITLES[:2]})
    assert received(smtp_server) == first_two  # killed between the second and third issue
    assert new_stories(site) == (1 if pause_at.startswith("create") else 0)

    again = run_cli(site, "send", **env_for(site, smtp_server))
    assert again.returncode == 0, again.stdout + again.stderr
    assert rerun_says in again.stdout
    if backend() == "sqlite":  # PostgreSQL has no send lock: sends share issues (claims)
        assert "Took over the lock of an interrupted send" in again.stdout
    assert received(smtp_server) == Counter({(r, t): 1 for r in READERS for t in TITLES})
    assert [(s, st) for _, s, st in issues(site)] == [(t, IssueStatus.SENT) for t in TITLES]


def test_max_stories_caps_the_issues_of_a_run_and_the_newer_stories_wait(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = env_for(site, smtp_server)
    first = run_cli(site, "send", "--max-stories", "2", **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [s for _, s, _ in issues(site)] == TITLES[:2]  # the oldest two
    assert "1 newer story waits for the next run (--max-stories 2 issues a run)." in first.stdout
    assert new_stories(site) == 1  # not skipped: it waits

    second = run_cli(site, "send", "--max-stories", "2", **env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [s for _, s, _ in issues(site)] == TITLES
    assert "waits for the next run" not in second.stdout
    assert received(smtp_server) == Counter({(r, t): 1 for r in READERS for t in TITLES})


def test_issue_per_option_overrides_the_setting_for_one_run(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = env_for(site, smtp_server, NEWSLETTER_ISSUE_PER="send")
    dry = run_cli(site, "send", "--dry-run", "--issue-per", "story", **env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "each of these 3 stories would go out as an issue of its own, oldest first" in (
        dry.stdout
    )
    lines = dry.stdout.splitlines()
    listed = [line for line in lines if line.startswith("  2026-")]
    assert [line.split("  ")[-1] for line in listed] == TITLES  # in sending order

    digest = run_cli(site, "send", **env)  # the setting: one digest
    assert digest.returncode == 0, digest.stdout + digest.stderr
    assert [s for _, s, _ in issues(site)] == [f"{TITLES[2]} + 2 more"]


def test_a_bad_issue_per_setting_is_a_one_line_error_and_changes_nothing(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = env_for(site, smtp_server, NEWSLETTER_ISSUE_PER="post")
    bad = run_cli(site, "send", **env)
    assert bad.returncode == 1
    assert "NEWSLETTER_ISSUE_PER: 'post' is not a mode (use send" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert issues(site) == []
    assert smtp_server.messages == []


def test_preview_and_test_copy_show_the_next_issue_alone(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = env_for(site, smtp_server)
    preview = site / "next.html"
    shown = run_cli(site, "send", "--preview", str(preview), **env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    html = preview.read_text(encoding="utf-8")
    assert "Summary of story 0." in html  # the oldest new story, alone
    assert "Summary of story 1." not in html
    assert "Summary of story 2." not in html

    copy = run_cli(site, "send", "--to", "staff@example.org", **env)
    assert copy.returncode == 0, copy.stdout + copy.stderr
    assert received(smtp_server) == Counter({("staff@example.org", TITLES[0]): 1})
    assert issues(site) == []  # recorded nowhere
