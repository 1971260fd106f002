"""The `sending` marks survive a power loss: the ledger's commits reach the disk first.

A power cut cannot be staged in a test; what can be checked is the mechanism the
failure model rests on (docs/architecture.md, "Failure model"): on SQLite the ledger's
connection switches to synchronous=FULL before its first mark (WAL with NORMAL may lose
the last commits on power loss, and a lost mark of a message that went out would make
it `pending` again), and back to NORMAL before it returns to the pool; on PostgreSQL
its session has synchronous_commit on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter.mail.transport import MemoryTransport, Reply
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.helpers import many, with_subscribers


def test_sqlite_ledger_commits_are_full_sync_from_the_first_mark(tmp_path: Path) -> None:
    settings, engine = with_subscribers(
        tmp_path, many(20), NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}"
    )
    log: list[tuple[int, str]] = []

    @sa.event.listens_for(engine, "connect")
    def trace(dbapi_connection: Any, _record: Any) -> None:
        key = id(dbapi_connection)
        dbapi_connection.set_trace_callback(lambda sql: log.append((key, sql)))

    engine.dispose()  # new connections from here on are traced
    result = run_send(engine, settings, SendOptions(), factory=MemoryTransport)
    assert result.issues[0].report.sent == 20

    marks = [
        (key, i)
        for i, (key, sql) in enumerate(log)
        if sql.startswith("UPDATE delivery SET status = ") and "sending" in sql
    ]
    assert marks, "no sending mark was traced"
    ledger, first = marks[0]
    before = [sql for key, sql in log[:first] if key == ledger]
    assert "PRAGMA synchronous=FULL" in before
    after = [sql for key, sql in log[first:] if key == ledger]
    back = after.index("PRAGMA synchronous=NORMAL")  # when it goes back to the pool
    assert "PRAGMA synchronous=FULL" not in after[:back]
    last_mark = max(i for i, sql in enumerate(after) if "status = 'sending'" in sql)
    assert last_mark < back
    assert "COMMIT" in after[last_mark:back]  # the last marks were committed under FULL
    assert all(key == ledger for key, _ in marks)  # every mark on that connection


def test_a_message_is_handed_over_only_after_its_mark_is_committed(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(40))
    seen: list[str] = []

    def responder(mail_from: str, rcpt: str, data: bytes) -> Reply:
        with engine.connect() as conn:  # another connection sees only committed rows
            status = conn.execute(
                sa.text(
                    "SELECT d.status FROM delivery d JOIN subscriber s"
                    " ON s.id = d.subscriber_id WHERE s.email = :e"
                ),
                {"e": rcpt},
            ).scalar_one()
        seen.append(status)
        return Reply(250, "OK")

    result = run_send(
        engine, settings, SendOptions(), factory=lambda: MemoryTransport(responder=responder)
    )
    assert result.issues[0].report.sent == 40
    assert set(seen) == {"sending"}
