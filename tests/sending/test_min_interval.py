"""NEWSLETTER_MIN_INTERVAL / `send --min-interval`: a digest cadence from an hourly cron line.

The clock is moved by moving the issues' `created_at` back in the database (what the
cadence counts from), never by sleeping. Real `python -m newsletter send` processes, a real
database and a real aiosmtpd server.
"""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from newsletter.config import load_settings
from newsletter.db import open_database
from newsletter.errors import ConfigError
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Story,
    StoryState,
    table_of,
)
from newsletter.settingvalues import parse_interval
from tests.support.helpers import (
    NEXT_FEED,
    SAMPLE_FEED,
    add_subscribers,
    database_url,
    many,
    run_cli,
    send_env,
    site_database,
    table_dump,
)
from tests.support.smtpserver import SMTPServer

READERS = many(3)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    with site_database(tmp_path) as engine:
        add_subscribers(engine, READERS)
    shutil.copy(SAMPLE_FEED, tmp_path / "feed.xml")
    return tmp_path


def age_issues(site: Path, age: timedelta) -> datetime:
    """Move every issue's creation back to `age` ago (the clock moved forward); returns it."""
    when = (datetime.now(UTC) - age).replace(microsecond=0)
    with site_database(site) as engine, engine.begin() as conn:
        conn.execute(sa.update(table_of(Issue)).values(created_at=when))
    return when


def count(site: Path, query: sa.Select[Any]) -> int:
    with site_database(site) as engine, engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def issue_count(site: Path) -> int:
    return count(site, sa.select(sa.func.count()).select_from(table_of(Issue)))


def new_story_count(site: Path) -> int:
    story = table_of(Story)
    return count(site, sa.select(sa.func.count()).where(story.c.state == StoryState.NEW))


@pytest.mark.usefixtures("db_backend")
def test_no_new_issue_before_the_interval_then_one_as_soon_as_it_passed(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = send_env(site, smtp_server)
    first = run_cli(site, "send", "--min-interval", "7d", **env)  # no issue yet: not held back
    assert first.returncode == 0, first.stdout + first.stderr
    assert issue_count(site) == 1
    sent = len(smtp_server.messages)
    assert sent == len(READERS)

    shutil.copy(NEXT_FEED, site / "feed.xml")  # the site published new stories
    last = age_issues(site, timedelta(days=3))
    held = run_cli(site, "send", "--min-interval", "7d", **env)
    assert held.returncode == 0, held.stdout + held.stderr
    assert held.stderr == ""
    due = last + timedelta(days=7)
    waiting = new_story_count(site)
    assert waiting > 0  # recorded now, so none is lost if it leaves the feed within the week
    assert held.stdout.strip() == (
        f"Not yet: the last issue went out 3 days ago, next one after "
        f"{due:%Y-%m-%d %H:%M} UTC ({waiting} new stories wait)."
    )
    assert issue_count(site) == 1
    assert len(smtp_server.messages) == sent

    # the stories of the held-back run leave the feed; the week passes; they still go out
    shutil.copy(SAMPLE_FEED, site / "feed.xml")
    age_issues(site, timedelta(days=7, minutes=1))
    week = run_cli(site, "send", "--min-interval", "7d", **env)
    assert week.returncode == 0, week.stdout + week.stderr
    assert "Sent issue 2 to 3 subscribers" in week.stdout
    assert issue_count(site) == 2
    assert new_story_count(site) == 0
    assert len(smtp_server.messages) == sent + len(READERS)

    # and right after it, the next run waits again (now with nothing new either)
    again = run_cli(site, "send", "--min-interval", "7d", **env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing new to send: no new stories." in again.stdout


def test_the_setting_gives_the_cadence_and_the_option_overrides_it(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = send_env(site, smtp_server, NEWSLETTER_MIN_INTERVAL="12h")
    assert run_cli(site, "send", **env).returncode == 0
    shutil.copy(NEXT_FEED, site / "feed.xml")
    age_issues(site, timedelta(hours=5, minutes=30))
    held = run_cli(site, "send", **env)
    assert held.returncode == 0, held.stdout + held.stderr
    assert held.stdout.startswith("Not yet: the last issue went out 5 hours ago, next one after ")
    dry = run_cli(site, "send", "--dry-run", **env)  # a dry run says so too
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Not yet: the last issue went out 5 hours ago" in dry.stdout
    now = run_cli(site, "send", "--min-interval", "off", **env)  # staff send it now
    assert now.returncode == 0, now.stdout + now.stderr
    assert "Sent issue 2 to 3 subscribers" in now.stdout


def test_an_unfinished_issue_is_finished_whatever_the_interval(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = send_env(site, smtp_server)
    assert run_cli(site, "send", **env).returncode == 0
    smtp_server.clear()
    # as a run stopped half-way leaves it
    with site_database(site) as engine, engine.begin() as conn:
        delivery, issue = table_of(Delivery), table_of(Issue)
        first_id = sa.select(sa.func.min(delivery.c.id)).scalar_subquery()
        conn.execute(
            sa.update(delivery)
            .where(delivery.c.id != first_id)
            .values(status=DeliveryStatus.PENDING)
        )
        conn.execute(sa.update(issue).values(status=IssueStatus.SENDING))
    shutil.copy(NEXT_FEED, site / "feed.xml")
    resumed = run_cli(site, "send", "--min-interval", "7d", **env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed issue 1 (stopped earlier): sent to 2 more subscribers" in resumed.stdout
    assert "Not yet: the last issue went out just now" in resumed.stdout
    assert len(smtp_server.messages) == 2
    assert issue_count(site) == 1


def test_with_issue_per_story_the_interval_spaces_the_runs_not_the_issues(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = send_env(site, smtp_server, NEWSLETTER_ISSUE_PER="story", NEWSLETTER_MIN_INTERVAL="1d")
    first = run_cli(site, "send", "--max-stories", "3", **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert issue_count(site) == 3  # one run: three issues, the interval not between them
    held = run_cli(site, "send", "--max-stories", "3", **env)
    assert held.returncode == 0, held.stdout + held.stderr
    assert held.stdout.startswith("Not yet: the last issue went out just now")
    age_issues(site, timedelta(days=1))
    due = run_cli(site, "send", "--max-stories", "3", **env)
    assert due.returncode == 0, due.stdout + due.stderr
    assert issue_count(site) == 6
    copies = Counter(rcpt for msg in smtp_server.messages for rcpt in msg.rcpt_tos)
    assert copies == Counter({reader: 6 for reader in READERS})


@pytest.mark.parametrize(
    ("value", "interval"),
    [
        ("12h", timedelta(hours=12)),
        ("1d", timedelta(days=1)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("30m", timedelta(minutes=30)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_interval_forms(tmp_path: Path, value: str, interval: timedelta) -> None:
    assert parse_interval(value) == interval
    env = {"NEWSLETTER_MIN_INTERVAL": value}
    assert load_settings(environ=env, env_file=tmp_path / "none").min_interval == interval


def test_off_or_unset_is_no_minimum(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert load_settings(environ={}, env_file=none).min_interval is None
    off = {"NEWSLETTER_MIN_INTERVAL": "off"}
    assert load_settings(environ=off, env_file=none).min_interval is None
    assert load_settings(environ={}, env_file=none).issue_per == "send"


#: "\u0667d": an Arabic-Indic seven, a digit to Python's int() but not an interval here
BAD_INTERVALS = ["7", "d", "7days", "1.5d", "-1d", "0d", "7d12h", "\u0667d", "1y"]


@pytest.mark.parametrize("value", BAD_INTERVALS)
def test_bad_intervals_are_one_line_errors_naming_the_forms(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"NEWSLETTER_MIN_INTERVAL": value}, env_file=tmp_path / "none")
    assert caught.value.message == (
        f"NEWSLETTER_MIN_INTERVAL: {value!r} is not an interval "
        "(use a whole number and m, h, d or w, like 12h, 1d or 7d; or off)"
    )


def test_bad_interval_on_the_command_line_or_in_the_setting(
    site: Path, smtp_server: SMTPServer
) -> None:
    env = send_env(site, smtp_server)
    before = table_dump(open_database(database_url(site)))
    option = run_cli(site, "send", "--min-interval", "weekly", **env)
    assert option.returncode == 2  # a usage error, as click's
    assert "Invalid value for '--min-interval': 'weekly' is not an interval" in option.stderr
    setting = run_cli(site, "send", **env, NEWSLETTER_MIN_INTERVAL="1 week")
    assert setting.returncode == 1
    assert setting.stderr.startswith(
        "Error: NEWSLETTER_MIN_INTERVAL: '1 week' is not an interval "
        "(use a whole number and m, h, d or w, like 12h, 1d or 7d; or off)"
    )
    assert "Traceback" not in setting.stderr
    assert table_dump(open_database(database_url(site))) == before
    assert smtp_server.messages == []
