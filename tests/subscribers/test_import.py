"""`import_contacts` on every export format and quirk, with exact counts.

Fixture files live in tests/data/contacts/; each test names the counts it expects.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from newsletter.db import open_database, read_session, write_session
from newsletter.errors import ImportFileError
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.subscribers import importer
from newsletter.subscribers.importer import ImportReport, import_contacts
from newsletter.subscribers.manage import (
    add_subscriber,
    forget_subscriber,
    remove_subscriber,
    unsubscribe_by_token,
)
from tests.support.helpers import database_url, table_dump

pytestmark = pytest.mark.usefixtures("db_backend")


HERE = Path(__file__).resolve().parents[1] / "data"
CONTACTS = HERE / "contacts"
EXAMPLE = HERE.parents[1] / "examples" / "contacts.csv"
FIELDS = ("imported", "updated", "unchanged", "duplicates", "rejected", "kept_unsubscribed")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "t.db"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_database(database_url(tmp_path, "t.db"))


def counts(report: ImportReport) -> dict[str, int]:
    return {name: getattr(report, name) for name in FIELDS}


def expect(**given: int) -> dict[str, int]:
    return {name: given.get(name, 0) for name in FIELDS}


def dump(engine: Engine) -> dict[str, list[str]]:
    """Every row of every table (the committed state), in a stable order."""
    return {name: sorted(map(repr, rows)) for name, rows in table_dump(engine).items()}


def subscribers(engine: Engine) -> dict[str, Subscriber]:
    with read_session(engine) as session:
        return {s.email_key: s for s in session.exec(select(Subscriber)).all()}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mailchimp_subscribed.csv", expect(imported=3, duplicates=1)),
        ("mailchimp_unsubscribed.csv", expect(kept_unsubscribed=2)),
        ("mailchimp_cleaned.csv", expect(kept_unsubscribed=1)),
        ("ghost_members.csv", expect(imported=2, kept_unsubscribed=1)),
        ("substack_subscribers.csv", expect(imported=2, kept_unsubscribed=1)),
        ("listmonk_subscribers.csv", expect(imported=1, kept_unsubscribed=2)),
        ("jetpack_subscribers.csv", expect(imported=1, kept_unsubscribed=1)),
        ("excel_cp1252_semicolon.csv", expect(imported=2, rejected=2)),
        ("tab_separated.tsv", expect(imported=3)),
        ("quoted_cells.csv", expect(imported=3)),
        ("invalid_rows.csv", expect(imported=2, rejected=8)),
        ("status_column.csv", expect(imported=2, rejected=2, kept_unsubscribed=3)),
        ("utf8_idna.csv", expect(imported=1, duplicates=1, rejected=1)),
        ("formula_cells.csv", expect(imported=4)),
        ("headerless.txt", expect(imported=2, duplicates=1)),
    ],
)
def test_fixture_counts_and_idempotence(
    engine: Engine, db_path: Path, name: str, expected: dict[str, int]
) -> None:
    report = import_contacts(engine, CONTACTS / name)
    assert counts(report) == expected
    before = dump(engine)
    again = import_contacts(engine, CONTACTS / name)
    stored = expected["imported"] + expected["kept_unsubscribed"]
    assert counts(again) == expect(
        unchanged=expected["imported"],
        kept_unsubscribed=expected["kept_unsubscribed"],
        duplicates=expected["duplicates"],
        rejected=expected["rejected"],
    )
    assert len(subscribers(engine)) == stored
    assert dump(engine) == before  # the same file twice changes nothing


def test_example_export(engine: Engine) -> None:
    report = import_contacts(engine, EXAMPLE)
    assert counts(report) == expect(imported=6, duplicates=1, rejected=3)
    subs = subscribers(engine)
    maria = subs["maria.lopez@example.org"]
    assert maria.email == "maria.lopez@example.org" and maria.name == "Maria Lopez"
    assert subs["priya.shah@example.org"].email == "PRIYA.SHAH@example.org"  # spelling kept
    assert "dana.kim@example.net" in subs  # stray spaces trimmed
    assert subs["o'brien@example.com"].name == "Siobhán O'Brien"
    assert maria.opt_in_at == datetime(2023, 1, 14, 10, 22, 1, tzinfo=UTC)
    assert maria.source == "contacts.csv" and maria.status == "active"
    assert maria.created_at.tzinfo is not None


def test_mailchimp_details(engine: Engine) -> None:
    import_contacts(engine, CONTACTS / "mailchimp_subscribed.csv", source="Mailchimp 2023")
    ana = subscribers(engine)["ana.silva@example.org"]
    assert ana.email == "ana.silva@example.org"  # the first spelling met wins
    assert ana.source == "Mailchimp 2023" and ana.consent_ip == "203.0.113.7"
    assert ana.confirmed_at == datetime(2022, 5, 1, 9, 5, tzinfo=UTC)


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


def test_cleaned_is_bounced_and_statuses_map(engine: Engine) -> None:
    import_contacts(engine, CONTACTS / "mailchimp_cleaned.csv")
    import_contacts(engine, CONTACTS / "status_column.csv")
    import_contacts(engine, CONTACTS / "listmonk_subscribers.csv")
    import_contacts(engine, CONTACTS / "ghost_members.csv")
    status = {k: s.status for k, s in subscribers(engine).items()}
    assert status["eli.moss@example.com"] == "bounced"
    assert status["yara.ivy@example.org"] == "bounced"
    assert status["bea.lamb@example.org"] == "complained"
    assert status["xia.hill@example.org"] == "unsubscribed"
    assert status["cal.moon@example.org"] == "active"  # empty status: active
    assert status["max.cole@example.org"] == "unsubscribed"  # listmonk blocklisted
    assert status["gus.hale@example.org"] == "unsubscribed"  # Ghost subscribed_to_emails=false
    assert "zed.jones@example.org" not in status  # pending: rejected, not imported
    assert subscribers(engine)["hana.ito@example.org"].name == "Ito, Hana"


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


def test_rejects_file(engine: Engine, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.csv"
    report = import_contacts(engine, CONTACTS / "invalid_rows.csv", rejects_path=rejects)
    assert report.rejected == 8 and report.rejects_path == rejects
    with rejects.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["email", "name", "reason"]
    assert len(rows) == 9
    assert rows[1][:2] == ["no-at-sign.example.org", "No At"] and rows[1][2] == "no @ sign"
    assert any("SMTPUTF8" in row[2] for row in rows[1:])
    assert not (tmp_path / "rejects.csv.part").exists()


def test_dry_run_writes_nothing_and_reports_exactly(
    engine: Engine, db_path: Path, tmp_path: Path
) -> None:
    add_subscriber(engine, "maria.lopez@example.org")
    before = dump(engine)
    dry = import_contacts(engine, EXAMPLE, dry_run=True)
    assert dump(engine) == before
    assert dry.dry_run and "Dry run" in dry.lines()[0]
    real = import_contacts(engine, EXAMPLE)
    # the file fills in the name and opt-in time of the one already here
    assert counts(dry) == counts(real) == expect(imported=5, updated=1, duplicates=1, rejected=3)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.csv", "no such file"),
        ("", "folder"),
        ("binary.csv", "binary"),
        ("not_contacts.html", "HTML"),
        ("no_email_column.csv", "no email column"),
        ("empty.csv", "empty"),
    ],
)
def test_bad_file_leaves_database_unchanged(
    engine: Engine, db_path: Path, name: str, message: str
) -> None:
    import_contacts(engine, EXAMPLE)
    before = dump(engine)
    with pytest.raises(ImportFileError, match=message) as err:
        import_contacts(engine, CONTACTS / name if name else CONTACTS)
    assert "\n" not in err.value.message
    assert dump(engine) == before


def test_other_bad_files(engine: Engine, tmp_path: Path) -> None:
    xlsx = tmp_path / "list.xlsx"
    xlsx.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(ImportFileError, match="spreadsheet"):
        import_contacts(engine, xlsx)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(ImportFileError, match="empty"):
        import_contacts(engine, blank)


def test_broken_csv_midway_rolls_back(engine: Engine, db_path: Path, tmp_path: Path) -> None:
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
    engine: Engine, db_path: Path, tmp_path: Path, monkeypatch
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
    engine: Engine, db_path: Path, tmp_path: Path, monkeypatch
) -> None:
    """The documented guarantee: committed batches are whole; the same import again finishes."""
    monkeypatch.setattr(importer, "BATCH", 3)
    monkeypatch.setattr(importer, "BATCH_SECONDS", 0.0)  # batches of exactly BATCH rows
    path = _numbered_file(tmp_path, 20)
    writes: list[int] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == importer.WRITING:
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
    engine: Engine, db_path: Path, tmp_path: Path, monkeypatch
) -> None:
    """Another writer gets the lock between batches, and its unsubscribe wins (issue 11.4)."""
    monkeypatch.setattr(importer, "BATCH", 3)
    late = add_subscriber(engine, "u15@example.org").subscriber
    assert late is not None
    path = _numbered_file(tmp_path, 20)
    landed: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == importer.WRITING and not landed:
            sub = unsubscribe_by_token(engine, late.token, method="one-click")
            assert sub is not None
            landed.append(sub.status)

    report = import_contacts(engine, path, progress=progress)
    assert landed == ["unsubscribed"]
    assert counts(report) == expect(imported=19, kept_unsubscribed=1)
    assert subscribers(engine)["u15@example.org"].status == "unsubscribed"


def test_address_forgotten_while_checking_is_not_stored(
    engine: Engine, db_path: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(importer, "BATCH", 3)
    add_subscriber(engine, "u10@example.org")
    path = _numbered_file(tmp_path, 20)

    def progress(stage: str, done: int, total: int) -> None:
        if stage == importer.CHECKING and done == 3:
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


def test_formula_cells_stored_as_given(engine: Engine) -> None:
    import_contacts(engine, CONTACTS / "formula_cells.csv")
    subs = subscribers(engine)
    assert subs["eve.nash@example.org"].name == '=HYPERLINK("http://evil.example","click")'
    assert subs["+tag@example.org"].name == "+1 555 0100"


def test_quirks_are_read_right(engine: Engine) -> None:
    import_contacts(engine, CONTACTS / "quoted_cells.csv")
    import_contacts(engine, CONTACTS / "excel_cp1252_semicolon.csv")
    import_contacts(engine, CONTACTS / "tab_separated.tsv")
    import_contacts(engine, CONTACTS / "utf8_idna.csv")
    subs = subscribers(engine)
    assert subs["tess.dunn@example.org"].name == "Dunn, Tess"
    assert subs["uma.egan@example.org"].name == 'Uma "Ume" Egan'
    assert subs["vic.falk@example.org"].name == "Vic Falk"
    assert subs["renee@example.fr"].name == "Renée Müller"  # cp1252 decoded
    assert subs["ulla@example.fr"].name == "Ulla Ørsted"
    assert subs["quinn.ash@example.org"].name == "Quinn Ash"
    assert subs["sam.cruz@example.org"].email == "SAM.CRUZ@example.org"
    assert subs["info@xn--bcher-kva.example"].name == "Bücher Shop"


def test_report_lines(engine: Engine, tmp_path: Path) -> None:
    report = import_contacts(engine, EXAMPLE, rejects_path=tmp_path / "r.csv")
    text = "\n".join(report.lines())
    assert "imported           6" in text and "rejected           3" in text
    assert "line 7: 'not-an-email': no @ sign" in text
    assert "r.csv" in text
