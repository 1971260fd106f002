"""Email addresses: one normal form and one identity key for every path in.

Every way an address enters (import, `subscribers add`, web signup) goes through
`normalise_address`, so that "Maria@Example.ORG " and "maria@example.org" are one
subscriber. The spelling shown keeps the case of the local part as given; the key
(`Subscriber.email_key`) is the case-folded address.

Validation is email-validator's syntax check (no DNS unless asked). Calling it per
address costs some 20-50 us, about 70% of it on the domain (cProfile), and domains
repeat heavily in real
lists, so the common case (a plain dot-atom local part) takes a fast path with the
domain result cached; everything else gets email-validator's full check and its
reason.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from email.errors import HeaderParseError
from email.header import decode_header
from functools import lru_cache
from typing import NamedTuple

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import EMAIL_MAX_LENGTH, LOCAL_PART_MAX_LENGTH

try:  # not public API (hence email-validator<3 in pyproject.toml); say what moved if it did
    from email_validator.syntax import DOT_ATOM_TEXT, validate_email_domain_name
except ImportError as exc:  # pragma: no cover - only with an email-validator that moved them
    raise ImportError(
        "newsletter.mail.addresses needs email_validator.syntax.DOT_ATOM_TEXT and "
        f"validate_email_domain_name, which this email-validator no longer has ({exc}); "
        "adapt the fast path in newsletter/mail/addresses.py"
    ) from exc

from newsletter.errors import SubscriberError

NAME_MAX_LENGTH = 200  # Subscriber.name


class NormalisedAddress(NamedTuple):
    email: str  # as given: trimmed, NFC, domain lower-cased and IDNA (ASCII)
    key: str  # case-folded whole address: the identity


class AddressError(SubscriberError):
    """A bad address; `reason` is short enough for an import report."""

    def __init__(self, raw: str, reason: str) -> None:
        shown = raw.strip()[:80] or "(empty)"
        super().__init__(f"{shown!r} is not a valid email address: {reason}")
        self.reason = reason


def _short(exc: EmailNotValidError) -> str:
    text = str(exc).strip().rstrip(".")
    if "Internationalized characters before the @-sign" in text:
        return "non-ASCII characters before the @ (SMTPUTF8) are not supported"
    return text


@lru_cache(maxsize=65536)
def _domain(domain: str) -> tuple[str | None, str | None]:
    """(ASCII domain, None) or (None, reason); cached because domains repeat."""
    try:
        info = validate_email_domain_name(domain)
    except EmailNotValidError as exc:
        return None, _short(exc)
    return info["ascii_domain"].lower(), None


def normalise_address(raw: str, *, check_deliverability: bool = False) -> NormalisedAddress:
    """Validate and normalise one address; raise AddressError (a SubscriberError) if bad."""
    text = raw.strip()
    if not text:
        raise AddressError(raw, "no email address")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError(raw, "no @ sign")
    if (
        not check_deliverability
        and len(local) <= LOCAL_PART_MAX_LENGTH
        and DOT_ATOM_TEXT.match(local)
    ):
        ascii_domain, reason = _domain(domain.lower())
        if ascii_domain is None:
            raise AddressError(raw, reason or "invalid domain")
        email = f"{local}@{ascii_domain}"
        if len(email) <= EMAIL_MAX_LENGTH:
            return NormalisedAddress(email, email.casefold())
    return _full_check(raw, text, check_deliverability)


def _full_check(raw: str, text: str, check_deliverability: bool) -> NormalisedAddress:
    """email-validator's complete check, for everything off the fast path."""
    try:
        info = validate_email(text, allow_smtputf8=False, check_deliverability=check_deliverability)
    except EmailNotValidError as exc:
        raise AddressError(raw, _short(exc)) from None
    local = info.ascii_local_part or info.local_part
    if len(local) > LOCAL_PART_MAX_LENGTH:
        raise AddressError(raw, "too long before the @ (over 64 characters)")
    email = f"{local}@{info.ascii_domain.lower()}"
    return NormalisedAddress(email, email.casefold())


def email_hash(key: str) -> str:
    """SHA-256 hex of an address key: all that stays of a forgotten address."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


#: Unicode line breaks (CR, LF, VT, FF, NEL, U+2028, U+2029) and every other control
#: character (C0, DEL, C1): each would split or corrupt a header, or a report line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)\s+(?==\?)")  # RFC 2047: ignored between two words
_RAW_LIMIT = 4 * NAME_MAX_LENGTH  # enough for a name of 200 characters in encoded-words


def _decode_word(match: re.Match[str]) -> str:
    """One encoded-word as text; U+FFFD where its charset or encoding is unusable."""
    try:
        parts = decode_header(match.group(0))
        return "".join(
            part.decode(charset or "ascii", errors="replace") if isinstance(part, bytes) else part
            for part, charset in parts
        )
    except (HeaderParseError, LookupError, ValueError):
        return "\ufffd"


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words until none is left (one may decode to another).

    A name stored as `=?utf-8?b?DQo=?=` looks harmless, but a mail parser decodes
    it to CR LF inside `To:` and fails, so names are stored decoded (and then
    cleaned). Each pass shortens the text, so this ends; the cap is a backstop.
    """
    for _ in range(len(text)):
        if not _ENCODED_WORD.search(text):
            break
        text = _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", text))
    return text


def clean_name(raw: str | None) -> str | None:
    """A display name safe for headers and reports, from any input path (import, CLI, signup).

    RFC 2047 encoded-words are decoded first; then line breaks and control
    characters become spaces, runs of spaces collapse, the text is NFC and capped
    at NAME_MAX_LENGTH; None if nothing is left.
    """
    if not raw:
        return None
    if (  # the common case, 4x faster: nothing to decode, replace, collapse or normalise
        len(raw) <= NAME_MAX_LENGTH
        and raw.isascii()
        and raw.isprintable()
        and "=?" not in raw
        and "  " not in raw
    ):
        return raw.strip() or None
    text = _decode_words(raw[:_RAW_LIMIT])
    text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    return text[:NAME_MAX_LENGTH].rstrip() or None
