"""`subscribers forget` racing the making of an issue, on PostgreSQL, with no foreign key.

Migration 0007 took the foreign keys off `delivery`; what they guarded is kept by
`db.fence_erasures`, which forget and the INSERT of an issue's deliveries both take.
Each test holds one side's transaction open at the point of the race, as that side's
code runs it, and runs the other side for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.db import ERASURE_LOCK_KEY
from newsletter.issues.create import create_issue
from newsletter.issues.feed import Feed
from newsletter.subscribers.manage import forget_subscriber
from tests.support.helpers import feed_story, use_database, with_subscribers

READERS = ["stays@example.org", "leaves@example.org"]
FENCE = sa.text(f"SELECT pg_advisory_xact_lock({ERASURE_LOCK_KEY})")


@pytest.fixture
def engine_and_settings(postgres_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    use_database(postgres_url)
    try:
        settings, engine = with_subscribers(tmp_path, READERS)
        yield engine, settings
        engine.dispose()
    finally:
        use_database(None)


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


def _wait_until_blocked(engine: Engine) -> None:
    """Until another session waits for the fence (the side run for real reached the race)."""
    query = sa.text(  # waits for the fence, in this database (not the whole server's)
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE NOT l.granted AND l.locktype = 'advisory' AND l.objid = :key"
        " AND d.datname = current_database()"
    ).bindparams(key=ERASURE_LOCK_KEY)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
        time.sleep(0.02)
    raise AssertionError("the other side never waited for a lock")


def _deliveries(engine: Engine) -> list[str]:
    """The deliveries' subscriber emails; a delivery with no subscriber shows as None."""
    query = sa.text(
        "SELECT s.email FROM delivery d LEFT JOIN subscriber s ON s.id = d.subscriber_id"
        " ORDER BY d.id"
    )
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(query)]


def test_an_issue_made_while_forget_is_under_way_waits_and_leaves_that_reader_out(
    engine_and_settings,  # type: ignore[no-untyped-def]
) -> None:
    engine, settings = engine_and_settings
    feed = Feed(
        title="AASR", link="https://endseclusion.org", stories=[feed_story("Restraint data out")]
    )
    with engine.connect() as forget:  # forget's first writes, not yet committed
        tx = forget.begin()
        forget.execute(FENCE)
        forget.execute(sa.text("DELETE FROM subscriber WHERE email = :e"), {"e": READERS[1]})
        thread, out = _in_thread(lambda: create_issue(engine, settings, feed))
        _wait_until_blocked(engine)
        forget.execute(
            sa.text("DELETE FROM delivery WHERE subscriber_id NOT IN (SELECT id FROM subscriber)")
        )
        tx.commit()
    thread.join(15)
    assert out and out[0].issue is not None  # type: ignore[attr-defined]
    assert _deliveries(engine) == [READERS[0]]


def test_forget_during_an_issues_insert_waits_and_erases_the_new_delivery_too(
    engine_and_settings,  # type: ignore[no-untyped-def]
) -> None:
    engine, _settings = engine_and_settings
    with engine.connect() as making:  # an issue's INSERT, as create_issue runs it
        tx = making.begin()
        issue = making.execute(
            sa.text(
                "INSERT INTO issue (subject, html, text, status, created_at)"
                " VALUES ('s', 'h', 't', 'sending', now()) RETURNING id"
            )
        ).scalar_one()
        making.execute(FENCE)
        making.execute(
            sa.text(
                "INSERT INTO delivery (issue_id, subscriber_id, status, attempts, updated_at)"
                " SELECT :i, id, 'pending', 0, now() FROM subscriber WHERE status = 'active'"
            ),
            {"i": issue},
        )
        thread, out = _in_thread(lambda: forget_subscriber(engine, READERS[1]))
        _wait_until_blocked(engine)
        tx.commit()
    thread.join(15)
    assert out and out[0].deleted and out[0].deliveries == 1  # type: ignore[attr-defined]
    assert _deliveries(engine) == [READERS[0]]


def test_an_import_in_progress_does_not_hold_up_the_making_of_an_issue(
    engine_and_settings,  # type: ignore[no-untyped-def]
) -> None:
    """Only forget takes the fence: an import's long transaction, which writes
    `subscriber` until the whole file is in, neither waits for an issue nor makes
    one wait (nor do the signups that would queue behind a table lock)."""
    engine, settings = engine_and_settings
    feed = Feed(title="AASR", link="https://endseclusion.org", stories=[feed_story("Data")])
    with engine.connect() as importing:
        tx = importing.begin()
        importing.execute(
            sa.text(
                "INSERT INTO subscriber (email, email_key, name, status, token, created_at,"
                " updated_at) VALUES ('new@example.org', 'new@example.org', '', 'active',"
                " 'tok-new', now(), now())"
            )
        )
        thread, out = _in_thread(lambda: create_issue(engine, settings, feed))
        thread.join(15)
        assert not thread.is_alive() and out[0].issue is not None  # type: ignore[attr-defined]
        tx.commit()
    assert sorted(filter(None, _deliveries(engine))) == sorted(READERS)
