"""What a send does before its first message: the quick migrations check and `send -v`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from newsletter.db import (
    _head_from_files,
    current_revision,
    head_revision,
    open_database,
)
from tests.support.helpers import (
    BASE_ENV,
    SAMPLE_FEED,
    add_subscribers,
    downgrade_to,
    many,
    run_cli,
)
from tests.support.smtpserver import SMTPServer

ROOT = Path(__file__).resolve().parents[2]


def test_the_head_read_from_the_files_is_alembics_head() -> None:
    assert _head_from_files() == head_revision()


def test_opening_a_migrated_database_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'news.db'}"
    open_database(url).dispose()  # creates and migrates it (Alembic runs here)
    code = (
        "import sys\n"
        "from newsletter.db import open_database\n"
        f"open_database({url!r}).dispose()\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"


def test_a_database_behind_the_head_is_still_migrated(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'old.db'}")
    downgrade_to(engine, "0001")
    assert current_revision(engine) == "0001"
    engine.dispose()
    engine = open_database(f"sqlite:///{tmp_path / 'old.db'}")
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_send_verbose_prints_each_phase(tmp_path: Path, smtp_server: SMTPServer) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'news.db'}")
    add_subscribers(engine, many(3))
    engine.dispose()
    done = run_cli(
        tmp_path,
        "send",
        "-v",
        **BASE_ENV,
        NEWSLETTER_FEED_URL=str(SAMPLE_FEED),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'news.db'}",
        NEWSLETTER_SMTP_URL=smtp_server.url,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        "migrations check (open the database)",
        "feed fetch and parse",
        "premailer (CSS inlining)",
        "delivery rows (INSERT ... SELECT)",
        "delivery (SMTP, bookkeeping)",
    ):
        assert f"phase {name}:" in done.stdout
    assert len(smtp_server.recipients()) == 3


def test_a_sends_sqlite_connections_keep_a_small_page_cache(tmp_path: Path) -> None:
    """The send's memory must not grow with the list: SQLite's default 2 MiB page cache
    per pooled connection did (+5 MB at 100,000 readers); other commands keep it."""
    from newsletter.cli.app import App
    from newsletter.config import load_settings

    url = f"sqlite:///{tmp_path / 'news.db'}"
    open_database(url).dispose()
    sizes = {}
    for command in ("send", "import"):
        environ = {**BASE_ENV, "NEWSLETTER_DATABASE_URL": url}
        app = App(load_settings(environ=environ, env_file=tmp_path / "none"))
        app.command = command
        with app.engine.connect() as conn:
            sizes[command] = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        app.engine.dispose()
    assert sizes == {"send": -256, "import": -2000}


def test_send_freezes_its_imports_and_thaws_them_when_it_ends(tmp_path: Path) -> None:
    """A send freezes what exists after its imports (its collections never walk them), and
    thaws it when the command ends, for a process that runs several commands (tests)."""
    import gc

    from click.testing import CliRunner

    from newsletter.cli import main
    from newsletter.db import open_database

    env = {**BASE_ENV, "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'news.db'}"}
    env |= {"NEWSLETTER_FEED_URL": str(SAMPLE_FEED), "NEWSLETTER_OUTBOX": str(tmp_path / "out")}
    add_subscribers(open_database(env["NEWSLETTER_DATABASE_URL"]), many(2))
    seen: list[int] = []
    gc.callbacks.append(seen_frozen := lambda phase, info: seen.append(gc.get_freeze_count()))
    try:
        result = CliRunner().invoke(main, ["send"], env=env)
    finally:
        gc.callbacks.remove(seen_frozen)
    assert result.exit_code == 0, result.output
    assert max(seen, default=0) > 0  # frozen while it ran
    assert gc.get_freeze_count() == 0
