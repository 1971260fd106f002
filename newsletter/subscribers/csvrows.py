"""Turning the rows of a contacts file into contacts: names, dates, the status that wins.

csvformats says where each field sits (Columns) and what the status words
mean; this module reads one row with that: the most restrictive status found
anywhere wins, an unknown status word or an unclear flag rejects the row. The
importer calls `row_reader` once per file and its result once per row, so that
path builds tuples, not objects. It never touches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from newsletter.models import SubscriberStatus
from newsletter.subscribers.csvformats import (
    FLAG_FALSE,
    FLAG_TRUE,
    Columns,
    header_key,
    restore_cell,
    status_of,
    worse,
)

_S = SubscriberStatus


def parse_when(text: str) -> datetime | None:
    """A timestamp from an export as aware UTC (naive means UTC); None if unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        for fmt in ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d", "%d %b %Y", "%b %d, %Y", "%B %d, %Y"):
            try:
                when = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        else:
            return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass
class Contact:
    """One row read from a file, before it meets the database."""

    email: str  # the raw cell, not yet validated
    name: str | None = None
    status: str = _S.ACTIVE
    opt_in_at: datetime | None = None
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    consent_ip: str | None = None
    problem: str | None = field(default=None)  # a reason to reject the row


def _cell(cells: list[str], index: int | None) -> str:
    return cells[index].strip() if index is not None and index < len(cells) else ""


def read_contact(cells: list[str], cols: Columns, header: list[str]) -> Contact:
    """Interpret one row; the most restrictive status found anywhere wins."""
    name = restore_cell(_cell(cells, cols.name))
    if not name:
        name = " ".join(p for p in (_cell(cells, cols.first), _cell(cells, cols.last)) if p)
    contact = Contact(
        email=restore_cell(_cell(cells, cols.email)),
        name=name or None,
        opt_in_at=parse_when(_cell(cells, cols.opt_in)),
        confirmed_at=parse_when(_cell(cells, cols.confirmed)),
        consent_ip=_cell(cells, cols.ip)[:64] or None,
    )
    status = cols.file_status or _S.ACTIVE
    for i in cols.statuses:
        value = _cell(cells, i)
        word = header_key(value)
        if not word:
            continue
        found = status_of(word)
        if found is None:
            contact.problem = f"unknown {header[i].strip()!r} value {value[:40]!r}"
            return contact
        status = worse(status, found)
    for i in cols.active_flags:
        value = _cell(cells, i).lower()
        if value in FLAG_FALSE and value:
            status = worse(status, _S.UNSUBSCRIBED)
        elif value and value not in FLAG_TRUE and parse_when(value) is None:
            contact.problem = f"unclear {header[i].strip()!r} value {value[:40]!r}"
            return contact
    for i in cols.inactive_flags:
        if _cell(cells, i).lower() not in FLAG_FALSE:
            status = worse(status, _S.UNSUBSCRIBED)
    if status == _S.PENDING:
        contact.problem = "pending: never confirmed in the source"
    contact.status = status
    if status in _S.SUPPRESSED:
        contact.unsubscribed_at = parse_when(_cell(cells, cols.unsubscribed))
    return contact


#: read_contact's result as a tuple: (email, name, status, opt_in_at, confirmed_at,
#: unsubscribed_at, consent_ip, problem); an import makes one per row, so no object.
ContactRow = tuple[
    str, str | None, str, datetime | None, datetime | None, datetime | None, str | None, str | None
]


def row_reader(cols: Columns, header: list[str]) -> Callable[[list[str]], ContactRow]:
    """`read_contact` for one file, as a function of the cells returning a ContactRow.

    A file without status or flag columns (most exports) gets a reader specialised
    to its columns, about three times faster than the general one; any other file
    gets `read_contact` itself. Both give the same values (a property test checks).
    """
    if cols.statuses or cols.active_flags or cols.inactive_flags:

        def general(cells: list[str]) -> ContactRow:
            c = read_contact(cells, cols, header)
            return (
                c.email, c.name, c.status, c.opt_in_at, c.confirmed_at, c.unsubscribed_at,
                c.consent_ip, c.problem,
            )  # fmt: skip

        return general
    status = cols.file_status or _S.ACTIVE
    inactive = status in _S.SUPPRESSED
    e, n, f, la = cols.email, cols.name, cols.first, cols.last
    o, c, i, u = cols.opt_in, cols.confirmed, cols.ip, cols.unsubscribed

    def fast(cells: list[str]) -> ContactRow:
        size = len(cells)
        email = cells[e].strip() if e < size else ""
        if email[:1] == "'":
            email = restore_cell(email)
        name = cells[n].strip() if n is not None and n < size else ""
        if name[:1] == "'":
            name = restore_cell(name)
        if not name and (f is not None or la is not None):
            first = cells[f].strip() if f is not None and f < size else ""
            last = cells[la].strip() if la is not None and la < size else ""
            name = f"{first} {last}" if first and last else first or last
        return (
            email,
            name or None,
            status,
            parse_when(cells[o]) if o is not None and o < size else None,
            parse_when(cells[c]) if c is not None and c < size else None,
            parse_when(cells[u]) if inactive and u is not None and u < size else None,
            cells[i].strip()[:64] or None if i is not None and i < size else None,
            None,
        )

    return fast
