"""A database made by the previous release (schema 0002) opens and works with this code.

The old database is built as 0.1 left it: the migrations up to 0002, then rows written
with plain SQL the way the old code wrote them (naive UTC timestamps, the fixed
`%%UNSUBSCRIBE_URL%%` placeholder, an issue stopped half-way with some deliveries sent and
some pending). A real `newsletter send` must upgrade it, finish the old issue without
sending anything twice, and `newsletter status` must report it.
"""

from __future__ import annotations

import email
import email.policy
import shutil
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from newsletter.db import alembic_config, current_revision, head_revision, make_engine
from tests.support.helpers import BASE_ENV, SAMPLE_FEED, run_cli

OLD_REVISION = "0002"  # the schema of release 0.1.0
OLD_SUBJECT = "AASR news: the issue 0.1 stopped half-way"
CREATED = "2026-11-30 09:00:00.000000"  # how SQLAlchemy stored UTC datetimes in SQLite

#: (email, subscriber status, delivery status of the old issue)
READERS = [
    ("ana@example.org", "active", "sent"),
    ("ben@example.org", "active", "sent"),
    ("cleo@example.org", "active", "pending"),
    ("dev@example.org", "active", "pending"),
    ("eli@example.org", "active", "deferred"),
    ("fay@example.org", "unsubscribed", "pending"),  # left after the issue was made
]


def _old_database(path: Path) -> str:
    """A SQLite file at schema 0002 holding what 0.1 wrote; returns its URL."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, OLD_REVISION)
    assert current_revision(engine) == OLD_REVISION
    html = (
        "<!DOCTYPE html><html><body><h1>AASR news</h1><p>An older story.</p>"
        '<p><a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a></p></body></html>'
    )
    text = "AASR news\n\nAn older story.\n\nUnsubscribe: %%UNSUBSCRIBE_URL%%\n"
    with engine.begin() as conn:
        run = conn.execute
        run(
            sa.text(
                "INSERT INTO issue (id, subject, html, text, status, created_at)"
                " VALUES (1, :subject, :html, :text, 'sending', :at)"
            ),
            {"subject": OLD_SUBJECT, "html": html, "text": text, "at": CREATED},
        )
        run(
            sa.text(
                "INSERT INTO story (uid, guid, link, title, author, summary_html, content_html,"
                " first_seen_at, state, issue_id) VALUES ('guid:old-story-1', 'old-story-1',"
                " 'https://endseclusion.org/old-story/', 'An older story', NULL,"
                " '<p>An older story.</p>', '<p>An older story.</p>', :at, 'issued', 1)"
            ),
            {"at": CREATED},
        )
        for n, (address, status, delivery) in enumerate(READERS, start=1):
            run(
                sa.text(
                    "INSERT INTO subscriber (id, email, email_key, status, token, source,"
                    " created_at, updated_at, unsubscribed_at)"
                    " VALUES (:id, :email, :email, :status, :token, 'import', :at, :at, :gone)"
                ),
                {
                    "id": n,
                    "email": address,
                    "status": status,
                    "token": f"{n:064x}",
                    "at": CREATED,
                    "gone": CREATED if status == "unsubscribed" else None,
                },
            )
            run(
                sa.text(
                    "INSERT INTO delivery (issue_id, subscriber_id, status, attempts, message_id,"
                    " updated_at, sent_at, last_error) VALUES (1, :id, :status, :attempts,"
                    " :message_id, :at, :sent_at, :error)"
                ),
                {
                    "id": n,
                    "status": delivery,
                    "attempts": 0 if delivery == "pending" else 1,
                    "message_id": f"<old-{n}@endseclusion.org>" if delivery == "sent" else None,
                    "at": CREATED,
                    "sent_at": CREATED if delivery == "sent" else None,
                    "error": "451 4.7.1 try again later" if delivery == "deferred" else None,
                },
            )
    engine.dispose()
    return url


def _outbox(folder: Path) -> list[email.message.EmailMessage]:
    found = sorted(folder.glob("*.eml")) if folder.exists() else []
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in found]


def test_a_database_of_release_0_1_is_upgraded_and_its_half_sent_issue_finished(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    feed = site / "feed.xml"
    shutil.copy(SAMPLE_FEED, feed)
    url = _old_database(site / "subscribers.db")
    outbox = site / "outbox"
    env = {
        **BASE_ENV,
        "NEWSLETTER_DATABASE_URL": url,
        "NEWSLETTER_FEED_URL": str(feed),
        "NEWSLETTER_OUTBOX": str(outbox),
    }

    sent = run_cli(site, "send", **env)
    assert sent.returncode == 0, sent.stderr

    engine = make_engine(url)
    assert current_revision(engine) == head_revision()  # upgraded in place
    with engine.connect() as conn:
        old = dict(
            conn.execute(
                sa.text(
                    "SELECT s.email, d.status FROM delivery d JOIN subscriber s"
                    " ON s.id = d.subscriber_id WHERE d.issue_id = 1"
                )
            ).all()
        )
        issue_status = conn.execute(sa.text("SELECT status FROM issue WHERE id = 1")).scalar()
        old_message_ids = conn.execute(
            sa.text("SELECT message_id FROM delivery WHERE issue_id = 1 AND subscriber_id <= 2")
        ).scalars()
        assert sorted(old_message_ids) == ["<old-1@endseclusion.org>", "<old-2@endseclusion.org>"]
    engine.dispose()
    assert issue_status == "sent"
    assert {a: old[a] for a in ("ana@example.org", "ben@example.org")} == {
        "ana@example.org": "sent",
        "ben@example.org": "sent",
    }
    for address in ("cleo@example.org", "dev@example.org", "eli@example.org"):
        assert old[address] == "sent", (address, old[address])
    assert old["fay@example.org"] == "skipped"  # left before their turn came

    messages = _outbox(outbox)
    old_issue = Counter(str(m["To"]) for m in messages if m["Subject"] == OLD_SUBJECT)
    # the pending and deferred readers get the old issue once; those it reached before, never
    assert old_issue == Counter({"cleo@example.org": 1, "dev@example.org": 1, "eli@example.org": 1})
    for message in messages:
        assert "fay@example.org" not in str(message["To"])  # unsubscribed: never mailed
        if message["Subject"] == OLD_SUBJECT:
            body = message.get_body(("plain",))
            assert body is not None
            text = body.get_content()
            assert "%%UNSUBSCRIBE_URL%%" not in text  # the old placeholder is still filled
            assert "https://news.endseclusion.org/" in text
    # anything else in the outbox is the feed's new issue: one copy per active reader
    new_issue = Counter(str(m["To"]) for m in messages if m["Subject"] != OLD_SUBJECT)
    active = {address for address, status, _ in READERS if status == "active"}
    assert new_issue == Counter(dict.fromkeys(active, 1))

    # a second run sends nothing: not the old issue again, not the new one
    again = run_cli(site, "send", **env)
    assert again.returncode == 0, again.stderr
    assert len(_outbox(outbox)) == len(messages)

    shown = run_cli(site, "status", **env)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["active", "5"] in lines and ["unsubscribed", "1"] in lines
    where = lines.index(["#1", "2026-11-30", "09:00", "sent", *OLD_SUBJECT.split()])
    assert lines[where + 1] == ["5", "sent,", "1", "skipped"]
