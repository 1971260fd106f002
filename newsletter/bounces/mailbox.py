"""Where bounce reports are read from: an mbox file, a Maildir folder, or IMAP over TLS.

Each source yields `(key, source label, raw bytes)`; the bounce processor
(newsletter.bounces.record) commits a batch and then hands back the keys it recorded.
Local files are only read (re-reading them is harmless: reports are stored
once). On IMAP, recorded messages are moved to a "Processed" folder after
their batch is committed, never before, and never deleted: mail that is no
report or cannot be read stays in the mailbox for a person.

No reader holds more than MAX_MESSAGE_BYTES of one message: a larger one is
passed on as TooLarge (its size), never read whole, and reported as skipped.
"""

from __future__ import annotations

import contextlib
import imaplib
import mailbox
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import Engine

from newsletter.bounces.record import MAX_MESSAGE_BYTES, BounceReport, TooLarge, process_messages
from newsletter.config import Settings
from newsletter.errors import ConfigError, ImportFileError
from newsletter.settingvalues import Secret

DEFAULT_FOLDER = "Processed"
IMAP_TIMEOUT = 60.0
_IMAP_HINT = "Check NEWSLETTER_BOUNCE_IMAP_URL; no message was moved."
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LINE = 64 * 1024  # an mbox is read a line (or this much of a long line) at a time
Message = tuple[str, str, bytes | TooLarge]


def read_local(path: Path, *, limit: int = MAX_MESSAGE_BYTES) -> Iterator[Message]:
    """The messages of an mbox file or a Maildir folder, oldest first where known."""
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise ImportFileError(f"{path} is a folder but not a Maildir (no cur/, new/, tmp/)")
        yield from _read_maildir(path, limit)
        return
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file or folder")
    with path.open("rb") as handle:
        head = handle.read(5)
    if head and head != b"From ":
        raise ImportFileError(
            f"{path} is not an mbox file (it must start with a 'From ' line)",
            hint="Give an mbox file or a Maildir folder; nothing was imported.",
        )
    yield from _read_mbox(path, limit)


def _read_maildir(path: Path, limit: int) -> Iterator[Message]:
    """Each message's size is looked at before its bytes are read."""
    maildir = mailbox.Maildir(path, factory=None, create=False)
    for key in sorted(maildir.keys()):
        handle = maildir.get_file(key)
        try:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(0)
            raw: bytes | TooLarge = handle.read() if size <= limit else TooLarge(size)
        finally:
            handle.close()
        yield key, f"{path.name}/{key}", raw


def _read_mbox(path: Path, limit: int) -> Iterator[Message]:
    """An mbox split as `mailbox.mbox` splits it (the same bytes), streamed.

    `mailbox.mbox.get_bytes` reads a whole message into memory, however large;
    here a message is collected only up to `limit` bytes, and past that only
    its size is counted until the next 'From ' line.
    """
    index = -1
    parts: list[bytes] | None = None  # None: over the limit (or before the first message)
    size = 0
    last_empty = False  # the last whole line was empty: it separates, it is not content
    line_start = True  # the next chunk starts a line
    in_from = False  # inside a long 'From ' line

    def finished() -> Message:
        key = str(index)
        if parts is None:
            return key, f"{path.name}#{key}", TooLarge(size)
        raw = b"".join(parts)
        return key, f"{path.name}#{key}", raw[:-1] if last_empty else raw

    with path.open("rb") as handle:
        while chunk := handle.readline(_LINE):
            ends_line = chunk.endswith(b"\n")
            if line_start and chunk.startswith(b"From "):
                if index >= 0:
                    yield finished()
                index, parts, size, last_empty = index + 1, [], 0, False
                in_from = not ends_line
            elif in_from:
                in_from = not ends_line
            elif index >= 0:
                size += len(chunk)
                if parts is not None:
                    if size > limit:
                        parts = None  # drop what was read: it is no report
                    else:
                        parts.append(chunk)
                last_empty = line_start and chunk == b"\n"
            line_start = ends_line
    if index >= 0:
        yield finished()


def import_path(
    engine: Engine, settings: Settings, path: Path, *, limit: int = MAX_MESSAGE_BYTES
) -> BounceReport:
    """`newsletter bounces import PATH`."""
    return process_messages(engine, settings, read_local(path, limit=limit))


@dataclass(frozen=True)
class ImapConfig:
    """NEWSLETTER_BOUNCE_IMAP_URL: imaps://user:pass@host[:port]/Mailbox or imap+starttls://..."""

    host: str
    port: int
    starttls: bool
    username: str
    password: Secret = field(repr=False)
    mailbox: str = "INBOX"


def parse_imap_url(value: str) -> ImapConfig:
    parts = urlsplit(value)
    if parts.scheme not in ("imaps", "imap+starttls"):
        raise ConfigError("NEWSLETTER_BOUNCE_IMAP_URL: use imaps:// or imap+starttls://")
    if not parts.hostname or not parts.username or parts.password is None:
        raise ConfigError(
            "NEWSLETTER_BOUNCE_IMAP_URL: give the host, user and password, "
            "like imaps://user:password@imap.example.org/INBOX"
        )
    starttls = parts.scheme == "imap+starttls"
    try:
        port = parts.port or (143 if starttls else 993)
    except ValueError as exc:
        raise ConfigError(f"NEWSLETTER_BOUNCE_IMAP_URL: bad port ({exc})") from None
    mailbox_name = unquote(parts.path.lstrip("/")) or "INBOX"
    return ImapConfig(
        parts.hostname,
        port,
        starttls,
        unquote(parts.username),
        Secret(unquote(parts.password)),
        mailbox_name,
    )


def _quote(name: str) -> str:
    """An IMAP quoted string (imaplib quotes passwords but not mailbox names)."""
    if not name.isascii():
        raise ConfigError(f"IMAP folder {name!r}: only ASCII folder names are supported")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(result: tuple[str, Sequence[object]], what: str) -> Sequence[object]:
    typ, data = result
    if typ != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise ConfigError(f"IMAP {what} failed: {detail or typ}", hint=_IMAP_HINT)
    return data


def _connect(cfg: ImapConfig) -> imaplib.IMAP4:
    """A logged-in connection; certificates are always verified."""
    context = ssl.create_default_context()
    where = f"{cfg.host}:{cfg.port}"
    try:
        if cfg.starttls:
            conn = imaplib.IMAP4(cfg.host, cfg.port, timeout=IMAP_TIMEOUT)
            conn.starttls(ssl_context=context)
        else:
            conn = imaplib.IMAP4_SSL(cfg.host, cfg.port, ssl_context=context, timeout=IMAP_TIMEOUT)
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"the IMAP server {where} has a certificate that cannot be trusted: "
            f"{exc.verify_message}",
            hint=_IMAP_HINT,
        ) from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ConfigError(f"cannot reach the IMAP server {where}: {exc}", hint=_IMAP_HINT) from None
    try:
        conn.login(cfg.username, cfg.password)
    except imaplib.IMAP4.error:
        conn.shutdown()
        raise ConfigError(
            f"the IMAP server {where} refused the login of {cfg.username!r}", hint=_IMAP_HINT
        ) from None
    return conn


class ImapMailbox:
    """One selected IMAP mailbox: list, read, and move messages by UID."""

    def __init__(self, conn: imaplib.IMAP4, name: str, folder: str) -> None:
        self.conn = conn
        self.name = name
        self.folder = folder
        _check(conn.select(_quote(name)), f"SELECT {name}")
        self.ensure_folder()
        # the capabilities before login may lack MOVE and UIDPLUS: ask again
        listed = _check(conn.capability(), "CAPABILITY")
        caps = {
            c.upper() for c in b" ".join(x for x in listed if isinstance(x, bytes)).decode().split()
        }
        self.can_move = "MOVE" in caps
        self.uidplus = "UIDPLUS" in caps
        self.moved = 0

    def ensure_folder(self) -> None:
        """Create the processed folder if missing (and subscribe to it, so clients show it)."""
        listed = _check(self.conn.list('""', _quote(self.folder)), "LIST")
        if not any(listed):
            _check(self.conn.create(_quote(self.folder)), f"CREATE {self.folder}")
            self.conn.subscribe(_quote(self.folder))

    def uids(self) -> list[bytes]:
        data = _check(self.conn.uid("SEARCH", "ALL"), "SEARCH")  # no CHARSET: UID SEARCH ALL
        found = data[0] if data else None
        return [uid for uid in found.split() if uid] if isinstance(found, bytes) else []

    def sizes(self, uids: list[bytes]) -> dict[bytes, int]:
        """RFC822.SIZE of each message, asked before any body is fetched."""
        found: dict[bytes, int] = {}
        for start in range(0, len(uids), 500):
            uid_set = b",".join(uids[start : start + 500]).decode("ascii")
            for item in _check(self.conn.uid("FETCH", uid_set, "(RFC822.SIZE)"), "FETCH SIZE"):
                line = item[0] if isinstance(item, tuple) else item
                if isinstance(line, bytes) and (uid := _UID.search(line)):
                    size = _SIZE.search(line)
                    found[uid[1]] = int(size[1]) if size else 0
        return found

    def messages(
        self, limit: int = MAX_MESSAGE_BYTES
    ) -> Iterator[tuple[bytes, str, bytes | TooLarge]]:
        uids = self.uids()
        sizes = self.sizes(uids) if uids else {}
        for uid in uids:
            source = f"imap:{self.name}/{uid.decode()}"
            if sizes.get(uid, 0) > limit:
                yield uid, source, TooLarge(sizes[uid])
                continue
            data = _check(self.conn.uid("FETCH", uid.decode(), "(BODY.PEEK[])"), f"FETCH {uid!r}")
            for item in data:
                if isinstance(item, tuple) and _UID.search(item[0]):
                    yield uid, source, item[1]
                    break

    def move(self, uids: Sequence[bytes]) -> None:
        """Move to the processed folder: MOVE, else COPY then flag \\Deleted (UID EXPUNGE)."""
        uid_set = b",".join(uids).decode("ascii")
        if self.can_move:
            _check(self.conn.uid("MOVE", uid_set, _quote(self.folder)), "MOVE")
        else:
            _check(self.conn.uid("COPY", uid_set, _quote(self.folder)), "COPY")
            _check(self.conn.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
            if self.uidplus:  # a plain EXPUNGE could remove mail somebody else flagged
                _check(self.conn.uid("EXPUNGE", uid_set), "EXPUNGE")
        self.moved += len(uids)


def fetch_imap(engine: Engine, settings: Settings, *, folder: str = DEFAULT_FOLDER) -> BounceReport:
    """`newsletter bounces fetch`: process the IMAP mailbox, move what was recorded."""
    settings.require("bounce_imap_url")
    cfg = parse_imap_url(cast(str, settings.bounce_imap_url))  # set: require() raised otherwise
    if folder.strip().upper() == cfg.mailbox.upper():
        raise ConfigError(f"the processed folder {folder!r} is the mailbox being read")
    conn = _connect(cfg)
    try:
        box = ImapMailbox(conn, cfg.mailbox, folder)
        try:
            report = process_messages(engine, settings, box.messages(), on_commit=box.move)
        except (imaplib.IMAP4.abort, OSError) as exc:
            raise ConfigError(
                f"the IMAP connection broke: {exc}",
                hint="What was recorded is kept; run `newsletter bounces fetch` again.",
            ) from None
        report.moved = box.moved
        return report
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()
