"""Settings and the database as a newcomer meets them: a real `newsletter` process, a real
SQLite file, a .env file or none, run from the right folder or the wrong one (cron)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from newsletter.db import open_database
from tests.support.helpers import (
    BASE_ENV,
    SAMPLE_FEED,
    add_subscribers,
    many,
    one_error_line,
    table_dump,
)
from tests.support.helpers import run_cli as run
from tests.support.smtpserver import SMTPServer


def write_env(folder: Path, *extra: str) -> None:
    lines = [f'{k}="{v}"' for k, v in BASE_ENV.items()]
    (folder / ".env").write_text("\n".join([*lines, *extra]) + "\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A working folder: the feed, a database with four readers, a .env (no SMTP yet)."""
    shutil.copy(SAMPLE_FEED, tmp_path / "feed.xml")
    engine = open_database(f"sqlite:///{tmp_path / 'subscribers.db'}")
    add_subscribers(engine, many(4))
    engine.dispose()
    return tmp_path


def dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    engine = open_database(f"sqlite:///{db}")
    try:
        return table_dump(engine)
    finally:
        engine.dispose()


# ---- 10.3: a typo in a setting name ------------------------------------------------------


def test_a_misspelt_smtp_url_in_dotenv_stops_send_before_anything(site: Path) -> None:
    """It used to send the issue to the outbox folder and record it as sent."""
    write_env(site, "NEWSLETTER_FEED_URL=feed.xml", "NEWSLETTER_SMPT_URL=smtp://127.0.0.1:1")
    before = dump(site / "subscribers.db")
    line = one_error_line(run(site, "send"))
    assert line == (
        "Error: NEWSLETTER_SMPT_URL is not a setting; did you mean NEWSLETTER_SMTP_URL? "
        f"It is set in {(site / '.env').resolve()}."
    )
    assert dump(site / "subscribers.db") == before
    assert not (site / "outbox").exists()


def test_a_misspelt_name_in_the_environment_is_named_too(site: Path) -> None:
    write_env(site, "NEWSLETTER_FEED_URL=feed.xml")
    line = one_error_line(run(site, "status", NEWSLETTER_OUTBOXX="box"))
    assert line == (
        "Error: NEWSLETTER_OUTBOXX is not a setting; did you mean NEWSLETTER_OUTBOX? "
        "It is set in the environment."
    )


def test_send_without_smtp_or_outbox_refuses_naming_both(site: Path) -> None:
    write_env(site, "NEWSLETTER_FEED_URL=feed.xml")
    before = dump(site / "subscribers.db")
    line = one_error_line(run(site, "send"))
    assert "NEWSLETTER_SMTP_URL or NEWSLETTER_OUTBOX" in line
    assert dump(site / "subscribers.db") == before
    assert not (site / "outbox").exists()
    # trying the look needs neither
    assert run(site, "send", "--dry-run").returncode == 0
    preview = run(site, "send", "--preview", "look.html")
    assert preview.returncode == 0, preview.stderr
    assert (site / "look.html").is_file()
    # asked for on purpose, the outbox works
    sent = run(site, "send", NEWSLETTER_OUTBOX="outbox")
    assert sent.returncode == 0, sent.stderr
    assert len(list((site / "outbox").glob("*.eml"))) == 4


# ---- 10.15: every missing setting at once, and which .env was read -----------------------


def test_all_missing_settings_are_named_with_the_dotenv_that_was_read(site: Path) -> None:
    (site / ".env").write_text('NEWSLETTER_FROM="AASR <news@endseclusion.org>"\n')
    line = one_error_line(run(site, "send"))
    assert line.startswith(
        "Error: missing settings for `newsletter send`: NEWSLETTER_FEED_URL, "
        "NEWSLETTER_POSTAL_ADDRESS, NEWSLETTER_SMTP_URL or NEWSLETTER_OUTBOX. "
    )
    assert f"Read {(site / '.env').resolve()}; set them there or in the environment" in line
    assert line.count("(") <= 1 and "((" not in line  # no nested parentheses


def test_with_no_dotenv_the_error_says_none_was_found_and_leaves_no_database(
    tmp_path: Path,
) -> None:
    line = one_error_line(run(tmp_path, "send"))
    assert "missing settings for `newsletter send`: NEWSLETTER_FEED_URL, NEWSLETTER_FROM" in line
    assert f"No .env file in {tmp_path.resolve()}" in line
    assert list(tmp_path.iterdir()) == []  # no empty subscribers.db left behind


# ---- 10.4: only the commands that add people create a database ---------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("send",),
        ("status",),
        ("subscribers", "list"),
        ("subscribers", "export"),
        ("subscribers", "remove", "a@example.org"),
        ("send", "--baseline"),
    ],
)
def test_from_the_wrong_folder_a_command_names_the_path_and_creates_nothing(
    site: Path, tmp_path_factory: pytest.TempPathFactory, args: tuple[str, ...]
) -> None:
    """Cron with the settings in the environment and the wrong working directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {**BASE_ENV, "NEWSLETTER_FEED_URL": str(site / "feed.xml"), "NEWSLETTER_OUTBOX": "ob"}
    line = one_error_line(run(elsewhere, *args, **env))
    assert f"no database at {elsewhere.resolve() / 'subscribers.db'}" in line
    assert f"the working directory is {elsewhere.resolve()}" in line
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "args", [("subscribers", "add", "ana@example.org"), ("import", "contacts.csv")]
)
def test_the_commands_that_add_people_create_the_database(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    (tmp_path / "contacts.csv").write_text("email\nana@example.org\n")
    done = run(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "subscribers.db").is_file()
    assert "ana@example.org" in run(tmp_path, "subscribers", "list").stdout


def test_trying_the_look_works_before_any_database_and_creates_none(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    shutil.copy(SAMPLE_FEED, tmp_path / "feed.xml")
    write_env(tmp_path, "NEWSLETTER_FEED_URL=feed.xml", f"NEWSLETTER_SMTP_URL={smtp_server.url}")
    dry = run(tmp_path, "send", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 active subscribers would receive it" in dry.stdout
    preview = run(tmp_path, "send", "--preview", "look.html")
    assert preview.returncode == 0, preview.stderr
    to = run(tmp_path, "send", "--to", "staff@example.org")
    assert to.returncode == 0, to.stderr
    assert smtp_server.recipients() == ["staff@example.org"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env", "feed.xml", "look.html"]
