"""What a contacts export looks like: encodings, delimiters, headers, status words.

Mailchimp, Ghost, Substack, listmonk, WordPress/Jetpack and Excel all name
their columns differently, and several say in a column (or by the mere presence
of one, like Mailchimp's UNSUB_TIME) that a contact must not be mailed. This
module knows those formats: it opens a file (encoding, delimiter, header line),
maps its columns (a new export format is a few header names or status words
here) and guards cells against spreadsheet formulas. Turning the rows into
contacts is csvrows'. It never touches the database. Unknown status values are
rejected rather than guessed, so a contact who left elsewhere is never imported
as active.
"""

from __future__ import annotations

import codecs
import csv
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
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
#: the values of a flag column (ACTIVE_FLAG_HEADERS) read as false and as true
FLAG_FALSE = frozenset({"", "false", "no", "n", "0", "off", "none", "null"})
FLAG_TRUE = frozenset({"true", "yes", "y", "1", "on", "subscribed", "x"})
_RANK: dict[str, int] = {
    _S.ACTIVE: 0,
    _S.PENDING: 1,
    _S.UNSUBSCRIBED: 2,
    _S.BOUNCED: 3,
    _S.COMPLAINED: 4,
}


def status_of(word: str) -> str | None:
    """The status a status column's value means (as `header_key` spells it); None if unknown."""
    return _WORD_STATUS.get(word)


def worse(a: str, b: str) -> str:
    """The more restrictive of two statuses: a contact who left anywhere stays left."""
    return a if _RANK[a] >= _RANK[b] else b


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
