"""`import_contacts` on every export format and quirk, with exact counts.

Fixture files live in tests/data/contacts/; each test names the counts it expects.
What an import must never undo (someone who left) and how an interrupted or
broken one ends are in test_import_safety.py.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from newsletter.errors import ImportFileError
from newsletter.subscribers.importer import import_contacts
from newsletter.subscribers.manage import add_subscriber
from tests.support.contacts import CONTACTS, EXAMPLE, counts, dump, expect, subscribers

pytestmark = pytest.mark.usefixtures("db_backend")


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
    engine: Engine, name: str, expected: dict[str, int]
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


def test_dry_run_writes_nothing_and_reports_exactly(engine: Engine, tmp_path: Path) -> None:
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
def test_bad_file_leaves_database_unchanged(engine: Engine, name: str, message: str) -> None:
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
