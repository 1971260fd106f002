"""A large `newsletter import` in a real process while the web side writes (issue 11.4).

A 600k-row import once held SQLite's write lock for 48 s, and a one-click
unsubscribe waiting behind it failed with "database is locked" and was lost.
Imports now check the whole file first and then write in short batches, so a
writer on another connection gets the lock between batches. The unsubscribing
connection here is given a busy timeout shorter than the whole import (as a web
request has a deadline): it can only succeed if the import lets go in between.

The same process killed with SIGKILL midway shows the interrupted-import
guarantee: whole batches are committed, nothing else, and the same import run
again finishes the job. SQLite only: its single write lock is what this is about.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from newsletter.db import make_engine, open_database
from newsletter.subscribers.importer import BATCH
from newsletter.subscribers.manage import add_subscriber, unsubscribe_by_token

ROOT = Path(__file__).resolve().parents[2]
ROWS = 200_000
WEB_BUSY_TIMEOUT_MS = 2000  # a web request's patience: far above one batch, far below the import


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("email,name,status\n")
        f.writelines(f"u{i}@d{i % 500}.example.org,User {i},active\n" for i in range(ROWS))
    return path


def _start_import(tmp_path: Path, url: str, csv_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, NEWSLETTER_DATABASE_URL=url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "import", str(csv_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _count(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM subscriber").fetchone()[0])


def _writing(db_path: Path, initial: int) -> bool:
    """Has the import started writing: rows committed, or the write lock held right now?"""
    if _count(db_path) > initial:
        return True
    conn = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True  # locked: a writer holds it
    finally:
        conn.close()


def _wait_until_writing(proc: subprocess.Popen[str], db_path: Path, initial: int) -> None:
    deadline = time.monotonic() + 600  # a bound on the loop, not a timing assertion
    while not _writing(db_path, initial):
        assert proc.poll() is None, f"the import ended before writing anything: {proc.stderr}"
        assert time.monotonic() < deadline, "the import never started writing"
        time.sleep(0.02)


def _web_engine(url: str) -> sa.Engine:
    """An engine like the web app's, whose writes give up after WEB_BUSY_TIMEOUT_MS."""
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def patience(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout={WEB_BUSY_TIMEOUT_MS}")

    return engine


def test_unsubscribes_land_during_a_large_import(tmp_path: Path, big_csv: Path) -> None:
    db_path = tmp_path / "t.db"
    url = f"sqlite:///{db_path}"
    engine = open_database(url)
    # people in the file (early, middle, late) and one who is not
    emails = ["u10@d10.example.org", "u100000@d0.example.org", "u199990@d490.example.org"]
    emails.append("outsider@example.org")
    tokens = {}
    for email in emails:
        sub = add_subscriber(engine, email).subscriber
        assert sub is not None
        tokens[email] = sub.token
    engine.dispose()
    proc = _start_import(tmp_path, url, big_csv)
    try:
        _wait_until_writing(proc, db_path, len(emails))
        web = _web_engine(url)
        for email, token in tokens.items():
            sub = unsubscribe_by_token(web, token, method="one-click")  # raises if locked out
            assert sub is not None and sub.status == "unsubscribed", email
        during = proc.poll() is None
        web.dispose()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert during, "the import had already finished: the unsubscribes did not test anything"
    assert proc.returncode == 0, err
    assert err == ""  # not a terminal: no progress bar noise on stderr
    assert "rejected           0" in out
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT email, status, unsubscribe_method FROM subscriber").fetchall()
    status = {email: (st, method) for email, st, method in rows}
    assert len(status) == ROWS + 1
    for email in emails:  # the unsubscribes all landed, and the import did not undo them
        assert status[email] == ("unsubscribed", "one-click"), email
    assert sum(st == "active" for st, _ in status.values()) == ROWS - 3


def test_kill_9_while_writing_keeps_whole_batches_and_a_rerun_finishes(
    tmp_path: Path, big_csv: Path
) -> None:
    db_path = tmp_path / "t.db"
    url = f"sqlite:///{db_path}"
    open_database(url).dispose()
    proc = _start_import(tmp_path, url, big_csv)
    try:
        _wait_until_writing(proc, db_path, 0)
        while _count(db_path) == 0:  # the lock is held: wait for the first commit
            assert proc.poll() is None, "the import ended before committing a batch"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        written = conn.execute("SELECT count(*) FROM subscriber").fetchone()[0]
        incomplete = conn.execute(
            "SELECT count(*) FROM subscriber WHERE token IS NULL OR status != 'active'"
            " OR email_key IS NULL OR source != 'big.csv'"
        ).fetchone()[0]
    assert 0 < written < ROWS, "killed too late to show anything"
    assert written % BATCH == 0  # whole batches only
    assert incomplete == 0
    again = _start_import(tmp_path, url, big_csv)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert f"imported           {ROWS - written}\n" in out
    assert f"unchanged          {written}\n" in out
    assert _count(db_path) == ROWS
