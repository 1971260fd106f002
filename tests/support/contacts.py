"""What the contacts import tests share: the sample exports, the counts, the stored state.

An import's report is compared as a dict of its counts (`counts(report) ==
expect(imported=2, rejected=1)`: every count not named must be 0), and the
database as every committed row, so a test shows exactly what changed.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import select

from newsletter.db import read_session
from newsletter.models import Subscriber
from newsletter.subscribers.importreport import ImportReport
from tests.support.helpers import table_dump

DATA = Path(__file__).resolve().parents[1] / "data"
CONTACTS = DATA / "contacts"  # one file per export format and quirk
EXAMPLE = DATA.parents[1] / "examples" / "contacts.csv"
FIELDS = ("imported", "updated", "unchanged", "duplicates", "rejected", "kept_unsubscribed")


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
