"""Property: no CSV, whatever its rows, makes someone who left active again (issue 11).

Any sequence of rows (any mix of spellings, status words, opt-out flags, junk,
duplicates), imported over any existing statuses, leaves every unsubscribed,
bounced or complained person exactly as they were, and never stores a forgotten
one. Small batches make each example cross several write transactions.
Bounded: a fixed number of examples on one SQLite file, reset between them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from newsletter.db import open_database, write_session
from newsletter.models import Subscriber, SubscriberStatus, Suppression
from newsletter.subscribers import importer
from newsletter.subscribers.manage import add_subscriber, forget_subscriber

PEOPLE = ("ana@example.org", "ben@example.org", "cy@example.net", "dee@example.com", "eli@x.org")
FORGOTTEN = "forgotten"
LEFT = sorted(SubscriberStatus.SUPPRESSED)
STATUS_CELLS = (
    "", "active", "subscribed", "Subscribed", "unsubscribed", "cleaned", "bounced", "complained",
    "spam", "pending", "free", "paid", "archived", "???", "ACTIVE ",
)  # fmt: skip
FLAG_CELLS = ("", "true", "false", "yes", "no", "0", "1", "x", "maybe", "2024-01-01")
HEADER = ["Email Address", "Name", "Status", "email_disabled", "subscribed_to_emails"]


def spelling(email: str) -> st.SearchStrategy[str]:
    return st.sampled_from([email, email.upper(), email.title(), f"  {email} ", f"'{email}"])


rows = st.lists(
    st.tuples(
        st.sampled_from(PEOPLE).flatmap(spelling) | st.sampled_from(["", "not-an-email", "@x"]),
        st.sampled_from(["", "Ana", "=1+2", "=?utf-8?b?DQo=?=", "x\u2028y"]),
        st.sampled_from(STATUS_CELLS),
        st.sampled_from(FLAG_CELLS),
        st.sampled_from(FLAG_CELLS),
    ),
    max_size=12,
)
existing = st.dictionaries(
    st.sampled_from(PEOPLE),
    st.sampled_from([*SubscriberStatus.ALL, FORGOTTEN]),
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = open_database(f"sqlite:///{tmp_path_factory.mktemp('prop') / 't.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def small_batches() -> Iterator[None]:
    saved = importer.BATCH
    importer.BATCH = 2
    yield
    importer.BATCH = saved


def _reset(engine: Engine, before: dict[str, str]) -> None:
    with write_session(engine) as session:
        session.execute(sa.delete(Subscriber))
        session.execute(sa.delete(Suppression))
    for email, status in before.items():
        add_subscriber(engine, email)
        if status == FORGOTTEN:
            forget_subscriber(engine, email)
        else:
            with write_session(engine) as session:
                session.execute(
                    sa.update(Subscriber).where(Subscriber.email_key == email).values(status=status)
                )


def _state(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {
            key: (status, name)
            for key, status, name in conn.execute(
                sa.select(Subscriber.email_key, Subscriber.status, Subscriber.name)
            )
        }


@pytest.mark.usefixtures("small_batches")
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(before=existing, lines=rows)
def test_no_import_reactivates_anyone_who_left(
    engine: Engine, tmp_path: Path, before: dict[str, str], lines: list[tuple[str, ...]]
) -> None:
    _reset(engine, before)
    path = tmp_path / "contacts.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(lines)
    start = _state(engine)
    report = importer.import_contacts(engine, path)
    after = _state(engine)
    for email, status in before.items():
        if status == FORGOTTEN:
            assert email not in after  # never stored again
        elif status in SubscriberStatus.SUPPRESSED:
            assert after[email] == start[email]  # not reactivated, not even edited
    assert all(st in SubscriberStatus.ALL for st, _ in after.values())
    assert all(
        name is None or ("\n" not in name and "\r" not in name) for _, name in after.values()
    )
    # and the same file again changes nothing (an import is idempotent)
    again = importer.import_contacts(engine, path)
    assert _state(engine) == after
    assert again.imported == 0 and again.updated == 0
    assert report.rows == again.rows == len([r for r in lines if any(c.strip() for c in r)])


def test_the_statuses_that_must_stay_are_the_ones_the_model_names() -> None:
    assert set(LEFT) == {"unsubscribed", "bounced", "complained"}
