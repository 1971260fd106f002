"""What a contacts import never undoes, and how an interrupted or broken one ends.

Nobody who left (unsubscribed, bounced, complained, removed or forgotten) is
made active again by an import, even when another writer acts between its
batches; a broken file or a Ctrl-C leaves whole committed batches, and the
same import again finishes the job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from newsletter.db import write_session
from newsletter.errors import ImportFileError
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.subscribers import importer
from newsletter.subscribers.importer import import_contacts
from newsletter.subscribers.importreport import CHECKING, WRITING
from newsletter.subscribers.manage import (
    add_subscriber,
    forget_subscriber,
    remove_subscriber,
    unsubscribe_by_token,
)
from tests.support.contacts import CONTACTS, EXAMPLE, counts, dump, expect, subscribers

pytestmark = pytest.mark.usefixtures("db_backend")


def test_unsubscribed_export_after_subscribed_one(engine: Engine) -> None:
    import_contacts(engine, CONTACTS / "mailchimp_subscribed.csv")
    report = import_contacts(engine, CONTACTS / "mailchimp_unsubscribed.csv")
    assert counts(report) == expect(updated=1, kept_unsubscribed=1)
    subs = subscribers(engine)
    ben = subs["ben.ode@example.com"]
    assert ben.status == "unsubscribed" and ben.unsubscribe_method == "import"
    assert ben.unsubscribed_at == datetime(2023, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert subs["dora.kay@example.org"].status == "unsubscribed"
    # and the subscribed export again does not bring Ben back
    again = import_contacts(engine, CONTACTS / "mailchimp_subscribed.csv")
    assert again.kept_unsubscribed == 1
    assert subscribers(engine)["ben.ode@example.com"].status == "unsubscribed"


@pytest.mark.parametrize("status", sorted(SubscriberStatus.SUPPRESSED))
def test_import_never_resubscribes(engine: Engine, tmp_path: Path, status: str) -> None:
    add_subscriber(engine, "ana@example.org", "Ana")
    with write_session(engine) as session:
        sub = session.exec(select(Subscriber)).one()
        sub.status = status
        session.add(sub)
    path = tmp_path / "c.csv"
    path.write_text("email,name,status\nANA@example.org,Ana Renamed,active\n", encoding="utf-8")
    report = import_contacts(engine, path)
    assert counts(report) == expect(kept_unsubscribed=1)
    sub = subscribers(engine)["ana@example.org"]
    assert (sub.status, sub.name) == (status, "Ana")


def test_updates_fill_and_activate_pending(engine: Engine, tmp_path: Path) -> None:
    add_subscriber(engine, "ana@example.org")
    add_subscriber(engine, "ben@example.org", "Ben")
    with write_session(engine) as session:
        ben = session.exec(select(Subscriber).where(Subscriber.email_key == "ben@example.org"))
        row = ben.one()
        row.status = SubscriberStatus.PENDING
        session.add(row)
    path = tmp_path / "c.csv"
    path.write_text(
        "email,name,optin_time\nana@example.org,Ana,2022-01-01T00:00:00Z\nben@example.org,Ben,\n",
        encoding="utf-8",
    )
    assert counts(import_contacts(engine, path)) == expect(updated=2)
    subs = subscribers(engine)
    assert subs["ana@example.org"].name == "Ana"
    assert subs["ana@example.org"].opt_in_at == datetime(2022, 1, 1, tzinfo=UTC)
    assert subs["ana@example.org"].source == "cli"  # provenance of the first add is kept
    assert subs["ben@example.org"].status == "active"


def test_duplicates_across_batches(engine: Engine, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(importer, "BATCH", 2)
    add_subscriber(engine, "old@example.org")
    lines = ["email"] + [f"u{i}@example.org" for i in range(5)] + ["OLD@example.org"]
    lines += ["U0@example.org", "u4@EXAMPLE.org", "old@example.org", "u5@example.org"]
    path = tmp_path / "c.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_contacts(engine, path)
    assert counts(report) == expect(imported=6, unchanged=1, duplicates=3)
    again = import_contacts(engine, path)
    assert counts(again) == expect(unchanged=7, duplicates=3)


def test_broken_csv_midway_rolls_back(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    good = "".join(f"u{i}@example.org,x\n" for i in range(30))
    path.write_text("email,name\n" + good + '"unterminated@example.org,' + "x" * 200_000)
    before = dump(engine)
    with pytest.raises(ImportFileError, match="line"):
        import_contacts(engine, path)
    assert dump(engine) == before


def _numbered_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "c.csv"
    path.write_text("email\n" + "".join(f"u{i}@example.org\n" for i in range(count)))
    return path


def test_interrupted_while_checking_leaves_nothing(
    engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(importer, "BATCH", 3)
    path = _numbered_file(tmp_path, 20)
    rejects = tmp_path / "rejects.csv"
    before = dump(engine)
    calls: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        calls.append((stage, done, total))
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_contacts(engine, path, progress=progress, rejects_path=rejects)
    assert calls == [("checking", 3, 20), ("checking", 6, 20), ("checking", 9, 20)]
    assert dump(engine) == before
    assert not rejects.exists() and not (tmp_path / "rejects.csv.part").exists()
    assert import_contacts(engine, path).imported == 20  # and the database is still usable


def test_interrupted_while_writing_keeps_whole_batches_and_resumes(
    engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    """The documented guarantee: committed batches are whole; the same import again finishes."""
    monkeypatch.setattr(importer, "BATCH", 3)
    monkeypatch.setattr(importer, "BATCH_SECONDS", 0.0)  # batches of exactly BATCH rows
    path = _numbered_file(tmp_path, 20)
    writes: list[int] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == WRITING:
            writes.append(done)
            if len(writes) == 2:
                raise KeyboardInterrupt

    with pytest.raises(importer.ImportIncomplete) as err:
        import_contacts(engine, path, progress=progress)
    assert (err.value.written, err.value.total) == (6, 20)
    assert "interrupted after writing 6 of 20" in err.value.message
    assert "again" in (err.value.hint or "")
    subs = subscribers(engine)
    assert sorted(subs) == sorted(f"u{i}@example.org" for i in range(6))  # file order
    assert all(s.status == "active" and s.token for s in subs.values())
    again = import_contacts(engine, path)
    assert counts(again) == expect(imported=14, unchanged=6)
    assert len(subscribers(engine)) == 20


def test_unsubscribe_between_batches_is_honoured(
    engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    """Another writer gets the lock between batches, and its unsubscribe wins (issue 11.4)."""
    monkeypatch.setattr(importer, "BATCH", 3)
    late = add_subscriber(engine, "u15@example.org").subscriber
    assert late is not None
    path = _numbered_file(tmp_path, 20)
    landed: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == WRITING and not landed:
            sub = unsubscribe_by_token(engine, late.token, method="one-click")
            assert sub is not None
            landed.append(sub.status)

    report = import_contacts(engine, path, progress=progress)
    assert landed == ["unsubscribed"]
    assert counts(report) == expect(imported=19, kept_unsubscribed=1)
    assert subscribers(engine)["u15@example.org"].status == "unsubscribed"


def test_address_forgotten_while_checking_is_not_stored(
    engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(importer, "BATCH", 3)
    add_subscriber(engine, "u10@example.org")
    path = _numbered_file(tmp_path, 20)

    def progress(stage: str, done: int, total: int) -> None:
        if stage == CHECKING and done == 3:
            forget_subscriber(engine, "u10@example.org")

    report = import_contacts(engine, path, progress=progress)
    assert report.suppressed == 1 and report.imported == 19
    assert "u10@example.org" not in subscribers(engine)


def test_forgotten_address_in_file_is_suppressed(engine: Engine) -> None:
    add_subscriber(engine, "maria.lopez@example.org")
    forget_subscriber(engine, "maria.lopez@example.org")
    report = import_contacts(engine, EXAMPLE)
    assert report.suppressed == 2 and report.imported == 5  # rows: it appears twice
    assert "maria.lopez@example.org" not in subscribers(engine)


def test_removed_then_imported_stays_unsubscribed(engine: Engine) -> None:
    import_contacts(engine, EXAMPLE)
    remove_subscriber(engine, "j.okafor@example.com")
    report = import_contacts(engine, EXAMPLE)
    assert report.kept_unsubscribed == 1
    assert subscribers(engine)["j.okafor@example.com"].status == "unsubscribed"
