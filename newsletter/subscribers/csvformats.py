"""Reading contact exports as they come: encodings, delimiters, headers, status columns.

Mailchimp, Ghost, Substack, listmonk, WordPress/Jetpack and Excel all name
their columns differently, and several say in a column (or by the mere presence
of one, like Mailchimp's UNSUB_TIME) that a contact must not be mailed. This
module turns any of them into `Contact` values; it never touches the database.
Unknown status values are rejected rather than guessed, so a contact who left
elsewhere is never imported as active.
"""

from __future__ import annotations

import codecs
import csv
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from newsletter.errors import ImportFileError
from newsletter.models import SubscriberStatus

_S = SubscriberStatus
CHUNK = 1 << 20


def header_key(text: str) -> str:
    """'E-mail Address ' -> 'emailaddress', 'Prénom' -> 'prenom': how headers are compared."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", text.lower())


EMAIL_HEADERS = (
    "emailaddress", "email", "mail", "emailaddr", "subscriberemail", "useremail",
    "memberemail", "contactemail", "primaryemail", "courriel",
)  # fmt: skip
NAME_HEADERS = ("name", "fullname", "displayname", "subscribername", "membername", "contactname")
FIRST_HEADERS = ("firstname", "fname", "givenname", "first", "forename", "vorname", "prenom")
LAST_HEADERS = ("lastname", "lname", "surname", "familyname", "last", "nachname", "nom")
OPT_IN_HEADERS = (
    "optintime", "optinat", "optindate", "optedinat", "subscribedat", "subscriptiondate",
    "datesubscribed", "subscribeddate", "subscribedon", "signupdate", "createdat",
    "created", "dateadded", "timestamp",
)  # fmt: skip
CONFIRM_HEADERS = ("confirmtime", "confirmedat", "confirmationdate", "confirmedtime")
IP_HEADERS = ("confirmip", "optinip", "consentip", "signupip", "ipaddress", "ip")
STATUS_HEADERS = (
    "status", "memberstatus", "subscriptionstatus", "subscriberstatus", "emailstatus",
    "subscriptionstate",
)  # fmt: skip
#: true means "may be mailed"; false means "must not be" (Ghost subscribed_to_emails)
ACTIVE_FLAG_HEADERS = (
    "subscribedtoemails", "subscribed", "emailsubscribed", "optedin",
    "acceptsmarketing", "acceptsemailmarketing", "emailoptin",
)  # fmt: skip
#: anything but empty/false means "must not be mailed" (Substack email_disabled)
INACTIVE_FLAG_HEADERS = (
    "emaildisabled", "unsubscribed", "blocklisted", "blacklisted", "optedout", "optout",
    "donotemail", "donotcontact", "deletedat", "emailbounced", "unsubscribedat",
)  # fmt: skip
#: the column's mere presence sets the status of every row (Mailchimp per-status exports)
PRESENCE_HEADERS = {
    "unsubtime": _S.UNSUBSCRIBED,
    "cleantime": _S.BOUNCED,
}

STATUS_WORDS = {
    _S.ACTIVE: {
        "active", "subscribed", "enabled", "confirmed", "optedin", "optin", "true", "yes", "y",
        "1", "free", "paid", "comped", "complimentary", "trial", "member", "valid",
    },
    _S.UNSUBSCRIBED: {
        "unsubscribed", "inactive", "disabled", "optedout", "optout", "false", "no", "n", "0",
        "blocklisted", "blacklisted", "blocked", "archived", "deleted", "removed", "cancelled",
        "canceled", "expired", "suppressed",
    },
    _S.BOUNCED: {"cleaned", "bounced", "hardbounce", "bounce", "invalid", "undeliverable"},
    _S.COMPLAINED: {"complained", "spam", "abuse", "spamcomplaint", "markedasspam"},
    _S.PENDING: {"pending", "unconfirmed", "notconfirmed", "awaitingconfirmation"},
}  # fmt: skip
_WORD_STATUS = {word: status for status, words in STATUS_WORDS.items() for word in words}
_FALSE = {"", "false", "no", "n", "0", "off", "none", "null"}
_TRUE = {"true", "yes", "y", "1", "on", "subscribed", "x"}
_RANK: dict[str, int] = {
    _S.ACTIVE: 0,
    _S.PENDING: 1,
    _S.UNSUBSCRIBED: 2,
    _S.BOUNCED: 3,
    _S.COMPLAINED: 4,
}


@dataclass(frozen=True)
class Columns:
    """Where each field sits in the rows of one file."""

    email: int
    name: int | None = None
    first: int | None = None
    last: int | None = None
    opt_in: int | None = None
    confirmed: int | None = None
    unsubscribed: int | None = None
    ip: int | None = None
    statuses: tuple[int, ...] = ()
    active_flags: tuple[int, ...] = ()
    inactive_flags: tuple[int, ...] = ()
    file_status: str | None = None  # from a presence column, e.g. UNSUB_TIME


def _first(keys: list[str], wanted: tuple[str, ...]) -> int | None:
    for name in wanted:
        if name in keys:
            return keys.index(name)
    return None


def map_columns(header: list[str]) -> Columns | None:
    """Find the known columns by their usual headers; None if there is no email column."""
    keys = [header_key(h) for h in header]
    email = _first(keys, EMAIL_HEADERS)
    if email is None:
        return None
    presence = [status for key, status in PRESENCE_HEADERS.items() if key in keys]
    unsub = _first(keys, ("unsubtime", "unsubscribedat", "cleantime"))
    return Columns(
        email=email,
        name=_first(keys, NAME_HEADERS),
        first=_first(keys, FIRST_HEADERS),
        last=_first(keys, LAST_HEADERS),
        opt_in=_first(keys, OPT_IN_HEADERS),
        confirmed=_first(keys, CONFIRM_HEADERS),
        unsubscribed=unsub,
        ip=_first(keys, IP_HEADERS),
        statuses=tuple(i for i, k in enumerate(keys) if k in STATUS_HEADERS),
        active_flags=tuple(i for i, k in enumerate(keys) if k in ACTIVE_FLAG_HEADERS),
        inactive_flags=tuple(i for i, k in enumerate(keys) if k in INACTIVE_FLAG_HEADERS),
        file_status=max(presence, key=_RANK.__getitem__) if presence else None,
    )


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


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


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
        found = _WORD_STATUS.get(word)
        if found is None:
            contact.problem = f"unknown {header[i].strip()!r} value {value[:40]!r}"
            return contact
        status = _worse(status, found)
    for i in cols.active_flags:
        value = _cell(cells, i).lower()
        if value in _FALSE and value:
            status = _worse(status, _S.UNSUBSCRIBED)
        elif value and value not in _TRUE and parse_when(value) is None:
            contact.problem = f"unclear {header[i].strip()!r} value {value[:40]!r}"
            return contact
    for i in cols.inactive_flags:
        if _cell(cells, i).lower() not in _FALSE:
            status = _worse(status, _S.UNSUBSCRIBED)
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


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Characters a spreadsheet may skip before the formula sign: zero-width and other
#: format characters (U+200B-U+200F, U+2060, U+FEFF, U+00AD...) and spaces.
_INVISIBLE_LEAD = re.compile(r"^[\s\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]+")


def _is_formula(value: str) -> bool:
    """Whether a spreadsheet could read this cell as a formula.

    The check runs on the NFKC form (fullwidth `＝`, small `﹦` and the like
    become `=`) with leading invisible characters removed, so neither hides one.
    """
    if value.startswith(_FORMULA_START):
        return True
    if value.isascii():
        return value.lstrip(" ").startswith(_FORMULA_START)
    shown = _INVISIBLE_LEAD.sub("", unicodedata.normalize("NFKC", value[:16]))
    return shown.startswith(_FORMULA_START)


def neutralise_cell(value: str) -> str:
    """Defuse spreadsheet formulas: a cell that could start one gets a leading '."""
    return "'" + value if _is_formula(value) else value


def restore_cell(value: str) -> str:
    """Undo `neutralise_cell`, so that our own export re-imports exactly."""
    if value.startswith("'") and _is_formula(value[1:]):
        return value[1:]
    return value


# ---- the file itself ---------------------------------------------------------


def _check_file(path: Path) -> bytes:
    """The first bytes of a readable, non-empty, non-binary file (or ImportFileError)."""
    if not path.exists():
        raise ImportFileError(f"{path}: no such file")
    if path.is_dir():
        raise ImportFileError(f"{path} is a folder, not a CSV file")
    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024)
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head.strip():
        raise ImportFileError(f"{path} is empty")
    if head.startswith(b"PK\x03\x04"):
        raise ImportFileError(f"{path} is a spreadsheet or zip file, not CSV (save it as CSV)")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return head
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    if b"\x00" in head or controls > len(head) // 100:
        raise ImportFileError(f"{path} is a binary file, not a CSV of contacts")
    return head


def _valid_as(path: Path, encoding: str) -> bool:
    """Whether the whole file decodes (checked in C-speed chunks, memory flat)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(path: Path, head: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 (Excel "Unicode text"), else cp1252/latin-1."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for encoding in ("utf-8", "cp1252"):
        if _valid_as(path, encoding):
            return encoding
    return "latin-1"


def detect_delimiter(first_line: str) -> str:
    """The delimiter used most in the header line outside quotes (comma when none)."""
    counts = dict.fromkeys(",;\t|", 0)
    quoted = False
    for ch in first_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _looks_like_html(text: str) -> bool:
    start = text.lstrip()[:1024].lower()
    return start.startswith(("<!doctype", "<html", "<?xml", "<head", "<body")) or (
        start.startswith("<") and ("<html" in start or "<body" in start)
    )


class ContactsFile:
    """An open contacts file: its encoding, delimiter, header and columns; rows stream."""

    def __init__(self, path: Path) -> None:
        self.path = path
        head = _check_file(path)
        self.encoding = detect_encoding(path, head)
        text = head.decode(self.encoding, errors="ignore").lstrip("\ufeff")
        if _looks_like_html(text):
            raise ImportFileError(f"{path} is an HTML page, not a CSV file")
        self.delimiter = detect_delimiter(text.splitlines()[0] if text.strip() else "")
        self._file = path.open(encoding=self.encoding, newline="")
        self._reader = csv.reader(self._file, delimiter=self.delimiter, skipinitialspace=True)
        self.header, self.columns, self._pending = self._read_header()

    def _read_header(self) -> tuple[list[str], Columns, list[list[str]]]:
        try:
            first = next((row for row in self._reader if any(c.strip() for c in row)), None)
        except csv.Error as exc:
            self.close()
            raise ImportFileError(f"{self.path}: not a readable CSV file ({exc})") from None
        if first is None:
            self.close()
            raise ImportFileError(f"{self.path} is empty")
        first = [c.replace("\ufeff", "").strip() for c in first]
        columns = map_columns(first)
        if columns is not None:
            return first, columns, []
        at_cells = [i for i, c in enumerate(first) if "@" in c and " " not in c.strip()]
        if len(at_cells) == 1:  # no header: a bare list of addresses
            return [f"column {i + 1}" for i in range(len(first))], Columns(at_cells[0]), [first]
        self.close()
        shown = ", ".join(repr(h) for h in first[:8]) or "nothing"
        raise ImportFileError(
            f"{self.path}: no email column (looked for headers like 'Email Address', "
            f"'email', 'E-mail'; found {shown})"
        )

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, cells) for every non-blank data row, streamed."""
        yield from ((self._reader.line_num, row) for row in self._pending)
        reader = self._reader
        try:
            for row in reader:  # a first cell with text settles it without a generator
                if row and (row[0].strip() or any(cell.strip() for cell in row)):
                    yield reader.line_num, row
        except csv.Error as exc:
            raise ImportFileError(
                f"{self.path}, line {self._reader.line_num}: not a readable CSV ({exc})"
            ) from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ContactsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def estimate_rows(path: Path) -> int:
    """About how many data rows a file has, for a progress bar; 0 if unknown.

    Its lines, less the header line (counting a last line without a newline): a
    bar that counted the header never reached 100%. Blank lines and quoted cells
    spanning lines make it a slight over-estimate; the importer ends on the true count.
    """
    lines = 0
    last = b"\n"
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError:
        return 0
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)
