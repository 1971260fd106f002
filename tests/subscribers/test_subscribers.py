"""Subscribers one by one: never resubscribe, keep rows on remove, forget for good."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from newsletter.db import open_database, read_session, write_session
from newsletter.errors import SubscriberError
from newsletter.mail.addresses import email_hash
from newsletter.models import (
    BounceEvent,
    Delivery,
    Issue,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from newsletter.subscribers.importer import import_contacts
from newsletter.subscribers.manage import (
    EXPORT_COLUMNS,
    AddResult,
    add_subscriber,
    counts_by_status,
    export_csv,
    forget_subscriber,
    list_subscribers,
    remove_subscriber,
    unsubscribe_by_token,
)
from tests.support.helpers import settings_for

pytestmark = pytest.mark.usefixtures("db_backend")


def get(engine: Engine, key: str) -> Subscriber | None:
    with read_session(engine) as session:
        return session.exec(select(Subscriber).where(Subscriber.email_key == key)).first()


def set_status(engine: Engine, key: str, status: str) -> None:
    with write_session(engine) as session:
        sub = session.exec(select(Subscriber).where(Subscriber.email_key == key)).one()
        sub.status = status
        session.add(sub)


def test_add_new_is_active_with_a_random_token(engine: Engine) -> None:
    result = add_subscriber(engine, " Ana.Silva@Example.ORG ", "Ana  Silva")
    assert result.outcome == AddResult.ADDED and result.active
    sub = get(engine, "ana.silva@example.org")
    assert sub is not None
    assert (sub.email, sub.name, sub.status, sub.source) == (
        "Ana.Silva@example.org", "Ana Silva", "active", "cli"
    )  # fmt: skip
    assert len(sub.token) >= 22 and "ana" not in sub.token.lower()
    assert sub.created_at.tzinfo is not None
    other = add_subscriber(engine, "ben@example.org").subscriber
    assert other is not None and other.token != sub.token


def test_add_existing_is_unchanged_whatever_the_case(engine: Engine) -> None:
    add_subscriber(engine, "ana@example.org")
    result = add_subscriber(engine, "ANA@EXAMPLE.ORG", "Other")
    assert result.outcome == AddResult.UNCHANGED
    assert counts_by_status(engine)["active"] == 1


@pytest.mark.parametrize("status", sorted(SubscriberStatus.SUPPRESSED))
def test_add_never_resubscribes(engine: Engine, status: str) -> None:
    add_subscriber(engine, "ana@example.org")
    set_status(engine, "ana@example.org", status)
    result = add_subscriber(engine, "Ana@example.org")
    assert result.outcome == AddResult.KEPT_UNSUBSCRIBED and not result.active
    assert status in result.message
    sub = get(engine, "ana@example.org")
    assert sub is not None and sub.status == status


def test_add_activates_a_pending_subscriber(engine: Engine) -> None:
    add_subscriber(engine, "ana@example.org")
    set_status(engine, "ana@example.org", SubscriberStatus.PENDING)
    assert add_subscriber(engine, "ana@example.org").outcome == AddResult.ACTIVATED


def test_add_bad_address_raises(engine: Engine) -> None:
    with pytest.raises(SubscriberError, match="not a valid email address"):
        add_subscriber(engine, "not-an-email")


def test_remove_keeps_the_row(engine: Engine) -> None:
    add_subscriber(engine, "ana@example.org")
    result = remove_subscriber(engine, "ANA@example.org")
    assert result.changed and result.status == "unsubscribed"
    sub = get(engine, "ana@example.org")
    assert sub is not None and sub.status == "unsubscribed"
    assert sub.unsubscribe_method == "admin" and sub.unsubscribed_at is not None
    again = remove_subscriber(engine, "ana@example.org")
    assert not again.changed and "already" in again.message


def test_remove_unknown_raises(engine: Engine) -> None:
    with pytest.raises(SubscriberError, match="no subscriber"):
        remove_subscriber(engine, "nobody@example.org")


def test_remove_keeps_bounced_as_bounced(engine: Engine) -> None:
    add_subscriber(engine, "ana@example.org")
    set_status(engine, "ana@example.org", SubscriberStatus.BOUNCED)
    assert not remove_subscriber(engine, "ana@example.org").changed
    sub = get(engine, "ana@example.org")
    assert sub is not None and sub.status == "bounced"


def test_unsubscribe_by_token_is_idempotent(engine: Engine) -> None:
    sub = add_subscriber(engine, "ana@example.org").subscriber
    assert sub is not None
    first = unsubscribe_by_token(engine, sub.token, method="one-click")
    assert first is not None and first.status == "unsubscribed"
    when = first.unsubscribed_at
    second = unsubscribe_by_token(engine, sub.token, method="web")
    assert second is not None and second.unsubscribed_at == when
    assert second.unsubscribe_method == "one-click"
    assert unsubscribe_by_token(engine, "nope", method="web") is None
    assert unsubscribe_by_token(engine, "", method="web") is None


def test_list_and_counts(engine: Engine) -> None:
    for addr in ("a@example.org", "b@example.org", "c@example.org"):
        add_subscriber(engine, addr)
    remove_subscriber(engine, "b@example.org")
    assert [s.email for s in list_subscribers(engine)] == [
        "a@example.org", "b@example.org", "c@example.org"
    ]  # fmt: skip
    assert [s.email for s in list_subscribers(engine, "unsubscribed")] == ["b@example.org"]
    assert counts_by_status(engine) == {
        "pending": 0, "active": 2, "unsubscribed": 1, "bounced": 0, "complained": 0
    }  # fmt: skip
    with pytest.raises(SubscriberError, match="unknown status"):
        list(list_subscribers(engine, "gone"))


def test_export_columns_and_formula_neutralised(engine: Engine) -> None:
    add_subscriber(engine, "+tag@example.org", '=HYPERLINK("http://x")')
    add_subscriber(engine, "plain@example.org", "@SUM(A1)")
    add_subscriber(engine, "tab@example.org", "-2+3")
    out = io.StringIO()
    assert export_csv(engine, out) == 3
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert rows[1][:3] == ["'+tag@example.org", '\'=HYPERLINK("http://x")', "active"]
    assert rows[2][1] == "'@SUM(A1)" and rows[3][1] == "'-2+3"
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert rows[1][3].endswith("+00:00")


HIDDEN_FORMULAS = [
    '\u200b=HYPERLINK("http://evil.example","x")',  # behind a zero-width space
    "\uff1dcmd|' /C calc'!A0",  # fullwidth equals sign
    "\ufeff@SUM(A1)",  # behind a BOM
    "\u200d\u2060+1+1",  # joiner and word joiner
    "\ufe62\u0032",  # small plus sign
    "\u00a0-2+3",  # behind a no-break space
    " =1+2",  # behind a plain space
]


@pytest.mark.parametrize("name", HIDDEN_FORMULAS)
def test_export_neutralises_formulas_hidden_behind_invisible_or_fullwidth(
    engine: Engine, name: str
) -> None:
    """Issue 11.12: the formula check runs on the NFKC form, zero-width characters removed."""
    add_subscriber(engine, "ana@example.org", name)
    stored = get(engine, "ana@example.org")
    assert stored is not None and stored.name is not None
    out = io.StringIO()
    export_csv(engine, out)
    row = list(csv.reader(io.StringIO(out.getvalue())))[1]
    assert row[1] == "'" + stored.name


def test_subscribers_add_decodes_and_cleans_encoded_word_names(engine: Engine) -> None:
    """Issue 11.11: `subscribers add` stores the decoded, one-line name."""
    add_subscriber(engine, "ana@example.org", "=?utf-8?q?Ana=0D=0ABcc:_eve@example.org?=")
    sub = get(engine, "ana@example.org")
    assert sub is not None and sub.name == "Ana Bcc: eve@example.org"
    add_subscriber(engine, "ben@example.org", "=?utf-8?b?DQo=?=")
    ben = get(engine, "ben@example.org")
    assert ben is not None and ben.name is None


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # needs 2 databases
def test_export_reimports_exactly(engine: Engine, tmp_path: Path) -> None:
    add_subscriber(engine, "+tag@example.org", "=cmd|' /C calc'!A0")
    add_subscriber(engine, "zw@example.org", "\u200b=1+2")
    add_subscriber(engine, "fw@example.org", "\uff1d1+2")
    add_subscriber(engine, "Ana@Example.org", "Ana Silva")
    add_subscriber(engine, "gone@example.org")
    remove_subscriber(engine, "gone@example.org")
    path = tmp_path / "export.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        export_csv(engine, f)
    fresh = open_database("sqlite:///" + str(tmp_path / "fresh.db"))
    report = import_contacts(fresh, path)
    assert (report.imported, report.kept_unsubscribed, report.rejected) == (4, 1, 0)

    def snapshot(e: Engine) -> list[tuple[object, ...]]:
        return [(s.email, s.name, s.status) for s in list_subscribers(e)]

    assert snapshot(fresh) == snapshot(engine)


def test_forget_erases_row_and_deliveries_and_suppresses(engine: Engine, tmp_path: Path) -> None:
    sub = add_subscriber(engine, "Ana@example.org", "Ana").subscriber
    assert sub is not None
    with write_session(engine) as session:
        issue = Issue(subject="s", html="h", text="t")
        session.add(issue)
        session.flush()
        session.add(Delivery(issue_id=issue.id, subscriber_id=sub.id))  # type: ignore[arg-type]
    result = forget_subscriber(engine, "ana@EXAMPLE.org")
    assert result.deleted and result.deliveries == 1
    assert get(engine, "ana@example.org") is None
    with read_session(engine) as session:
        hashes = session.exec(select(Suppression.email_hash)).all()
        assert hashes == [email_hash("ana@example.org")]
        assert session.exec(select(Delivery)).all() == []
    # it never comes back: not by add, not by import; forgetting twice is harmless
    assert add_subscriber(engine, "ANA@example.org").outcome == AddResult.SUPPRESSED
    path = tmp_path / "again.csv"
    path.write_text("email,name\nana@example.org,Ana\n", encoding="utf-8")
    report = import_contacts(engine, path)
    assert (report.imported, report.suppressed) == (0, 1)
    assert get(engine, "ana@example.org") is None
    assert not forget_subscriber(engine, "ana@example.org").deleted
    with read_session(engine) as session:
        assert len(session.exec(select(Suppression)).all()) == 1


def test_forget_erases_the_bounce_reports_that_hold_the_address(engine: Engine) -> None:
    """A bounce report keeps the address it was about; an erasure takes it too (a
    report tied to the row used to make forget fail on its foreign key)."""
    sub = add_subscriber(engine, "ana@example.org", "Ana").subscriber
    other = add_subscriber(engine, "bo@example.org", "Bo").subscriber
    assert sub is not None and other is not None
    with write_session(engine) as session:
        issue = Issue(subject="s", html="h", text="t")
        session.add(issue)
        session.flush()
        delivery = Delivery(issue_id=issue.id, subscriber_id=sub.id)  # type: ignore[arg-type]
        session.add(delivery)
        session.flush()
        reports = [
            dict(subscriber_id=sub.id, delivery_id=delivery.id, recipient="ana@example.org"),
            dict(delivery_id=delivery.id),  # matched by its delivery alone
            dict(recipient="ANA@example.org"),  # matched to nobody, by address only
            dict(subscriber_id=other.id, recipient="bo@example.org"),
        ]
        for n, fields in enumerate(reports):
            session.add(BounceEvent(report_id=f"r{n}", kind="hard", **fields))  # type: ignore[arg-type]
    assert forget_subscriber(engine, "Ana@example.org").deleted
    with read_session(engine) as session:
        left = session.exec(select(BounceEvent.recipient)).all()
    assert left == ["bo@example.org"]


def test_signup_stores_the_decoded_cleaned_name(engine: Engine, tmp_path: Path) -> None:
    """Issue 11.11: web signups go through the same clean_name as import and add."""
    from newsletter.subscribers.signup import request_signup

    settings = settings_for(tmp_path)
    raw = "=?utf-8?q?Ana=0D=0ABcc:_eve@example.org?="
    request_signup(engine, settings, "ana@example.org", raw, send_now=False)
    sub = get(engine, "ana@example.org")
    assert sub is not None and sub.status == "pending"
    assert sub.name == "Ana Bcc: eve@example.org"
