"""The envelope sender (Return-Path) of each message, with a signed VERP token.

Without NEWSLETTER_BOUNCE_ADDRESS the envelope sender is the From address.
With it, every delivery gets `local+TOKEN@domain`, so that any bounce, even a
non-standard one that quotes nothing of the original, maps back to its
delivery. TOKEN is an 80-bit HMAC-SHA256 tag (lower-case base32, 16 characters)
followed by the delivery id in decimal: short, unchanged by MTAs that
lower-case local parts, and unforgeable without NEWSLETTER_SECRET_KEY (a forged
token cannot make us suppress somebody else).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from functools import lru_cache

from newsletter.config import Settings
from newsletter.errors import ConfigError

_TAG_CHARS = 16  # 10 bytes of HMAC = 16 base32 characters, no padding
_TOKEN = re.compile(r"^([a-z2-7]{16})([0-9]{1,18})$")
_CONTEXT = b"newsletter verp v1\x00"  # domain separation from other uses of the key


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    """A key for VERP only, derived once per secret (this is called per message)."""
    return hmac.new(secret.encode("utf-8"), _CONTEXT, hashlib.sha256).digest()


def _tag(key: bytes, delivery_id: int) -> str:
    digest = hmac.new(key, str(delivery_id).encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def _verp_key(settings: Settings) -> bytes:
    if not settings.secret_key:
        raise ConfigError(
            "NEWSLETTER_SECRET_KEY is not set: it signs the bounce (VERP) addresses "
            "because NEWSLETTER_BOUNCE_ADDRESS is set"
        )
    return _key(settings.secret_key)


def check_verp_settings(settings: Settings) -> None:
    """Raise ConfigError early (before a send starts) if VERP cannot be used."""
    if settings.bounce_address:
        _verp_key(settings)


def make_token(settings: Settings, delivery_id: int) -> str:
    """The VERP token of one delivery."""
    if delivery_id < 0:
        raise ValueError("delivery ids are positive")
    return _tag(_verp_key(settings), delivery_id) + str(delivery_id)


def decode_token(settings: Settings, token: str) -> int | None:
    """The delivery id of a token, or None when it is malformed, forged or altered."""
    match = _TOKEN.match(token.strip().lower())
    if not match or not settings.secret_key:
        return None
    tag, digits = match.groups()
    delivery_id = int(digits)
    if digits != str(delivery_id):  # leading zeros: not a token we made
        return None
    expected = _tag(_key(settings.secret_key), delivery_id)
    return delivery_id if hmac.compare_digest(tag, expected) else None


def split_bounce_address(settings: Settings) -> tuple[str, str] | None:
    """(local part, domain) of NEWSLETTER_BOUNCE_ADDRESS, lower-cased; None when unset."""
    if not settings.bounce_address:
        return None
    local, _, domain = settings.bounce_address.rpartition("@")
    return local.lower(), domain.lower()


def find_token(settings: Settings, address: str) -> str | None:
    """The raw token in `address` if it is `local+TOKEN@domain` of our bounce address."""
    parts = split_bounce_address(settings)
    if parts is None:
        return None
    local, domain = parts
    text = address.strip().strip("<>").lower()
    mailbox, at, dom = text.rpartition("@")
    if not at or dom != domain or not mailbox.startswith(local + "+"):
        return None
    return mailbox[len(local) + 1 :] or None


def envelope_sender(settings: Settings, delivery_id: int | None) -> str:
    """MAIL FROM for one delivery (None: a message outside any issue, e.g. a test copy)."""
    bounce = settings.bounce_address
    if bounce:
        if delivery_id is None:
            return bounce
        local, _, domain = bounce.rpartition("@")
        return f"{local}+{make_token(settings, delivery_id)}@{domain}"
    return settings.sender.addr_spec
