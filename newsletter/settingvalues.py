"""The value of each setting: its type, and the parser that turns its text into it.

Durations, rates, on/off, lists of delays, the SMTP and IMAP URLs, the From
address... Each parser takes the text as set in the environment or `.env`
and returns the typed value or raises a one-line `ConfigError` that names the
setting. config.py owns the `Settings` object, where the text comes from and
which parser each setting gets; a CLI option that takes the same kind of
value (`send --min-interval`, `send --content`) uses the same parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from urllib.parse import unquote, urlsplit

from newsletter.errors import ConfigError


class Secret(str):
    """A string that never shows itself in a repr or a traceback."""

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to reach the SMTP server, parsed from NEWSLETTER_SMTP_URL."""

    host: str
    port: int
    security: str  # "none", "starttls" or "tls"
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        scheme = {"none": "smtp", "starttls": "smtp+starttls", "tls": "smtps"}[self.security]
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


_SMTP_SCHEMES = {"smtp": ("none", 25), "smtp+starttls": ("starttls", 587), "smtps": ("tls", 465)}


def parse_smtp_url(value: str) -> SmtpConfig:
    """Parse smtp://user:pass@host:port, smtp+starttls://..., smtps://..."""
    parts = urlsplit(value)
    if parts.scheme not in _SMTP_SCHEMES:
        raise ConfigError(
            f"NEWSLETTER_SMTP_URL: unknown scheme {parts.scheme!r} "
            "(use smtp://, smtp+starttls:// or smtps://)"
        )
    security, default_port = _SMTP_SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ConfigError("NEWSLETTER_SMTP_URL: no host name")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"NEWSLETTER_SMTP_URL: bad port ({exc})") from None
    username = unquote(parts.username) if parts.username else None
    password = Secret(unquote(parts.password)) if parts.password else None
    return SmtpConfig(parts.hostname, port, security, username, password)


def parse_from_address(value: str) -> Address:
    """NEWSLETTER_FROM: 'Name <news@example.org>' or a bare address, its domain lower-cased."""
    name, addr = parseaddr(value)
    if not addr or "@" not in addr or any(c in value for c in "\r\n"):
        raise ConfigError(
            f"NEWSLETTER_FROM: {value!r} is not an address like 'AASR <news@example.org>'"
        )
    local, _, domain = addr.rpartition("@")
    if not local or "." not in domain:
        raise ConfigError(f"NEWSLETTER_FROM: {addr!r} has no valid domain")
    try:
        return Address(display_name=name, username=local, domain=domain.lower())
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"NEWSLETTER_FROM: {value!r} is not a valid address ({exc})") from None


def positive_int(name: str, value: str) -> int:
    """A whole number of at least 1, or a ConfigError naming the setting `name`."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, not {number}")
    return number


def positive_float(name: str, value: str) -> float:
    """A number above 0, or a ConfigError naming the setting `name`."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if number <= 0:
        raise ConfigError(f"{name}: must be above 0, not {number}")
    return number


def parse_retry_delays(value: str) -> tuple[float, ...]:
    """NEWSLETTER_RETRY_DELAYS: '5,30' -> (5.0, 30.0); '0' or 'none' turns in-run retries off."""
    if value.lower() in ("0", "none", "off"):
        return ()
    try:
        delays = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"NEWSLETTER_RETRY_DELAYS: {value!r} is not a list of seconds like '5,30'"
        ) from None
    if any(d < 0 for d in delays):
        raise ConfigError("NEWSLETTER_RETRY_DELAYS: delays cannot be negative")
    return delays


#: What each story of an issue shows: the feed's summary, the whole post, or its title only.
STORY_CONTENT_MODES = ("summary", "full", "title")


def story_content_mode(value: str) -> str:
    """The content mode named by `value` (any case), or a one-line ConfigError listing them."""
    mode = value.strip().lower()
    if mode not in STORY_CONTENT_MODES:
        raise ConfigError(
            f"NEWSLETTER_STORY_CONTENT: {value!r} is not a content mode "
            f"(use {', '.join(STORY_CONTENT_MODES[:-1])} or {STORY_CONTENT_MODES[-1]})"
        )
    return mode


#: How new stories become issues: all of a run's in one digest, or one issue per story.
ISSUE_PER_MODES = ("send", "story")


def issue_per_mode(value: str) -> str:
    """The issue mode named by `value` (any case), or a one-line ConfigError listing them."""
    mode = value.strip().lower()
    if mode not in ISSUE_PER_MODES:
        raise ConfigError(
            f"NEWSLETTER_ISSUE_PER: {value!r} is not a mode (use send: one digest of the "
            "new stories per run, or story: one issue per story)"
        )
    return mode


_INTERVAL = re.compile(r"(\d+)\s*([mhdw])", re.IGNORECASE | re.ASCII)
_INTERVAL_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_interval(value: str, name: str = "NEWSLETTER_MIN_INTERVAL") -> timedelta:
    """'12h' -> 12 hours, '7d' -> 7 days ('m', 'h', 'd', 'w'); 'off' or '0' -> zero (no
    minimum). Strict: a typo must not silently send daily instead of weekly."""
    text = value.strip()
    if text.lower() in ("off", "0"):
        return timedelta(0)
    match = _INTERVAL.fullmatch(text)
    try:
        if match is not None and int(match.group(1)) > 0:
            return timedelta(**{_INTERVAL_UNITS[match.group(2).lower()]: int(match.group(1))})
    except OverflowError:  # '99999999999w': past what a date can hold
        pass
    raise ConfigError(
        f"{name}: {value!r} is not an interval "
        "(use a whole number and m, h, d or w, like 12h, 1d or 7d; or off)"
    )


def on_off(name: str, value: str) -> bool:
    """'on'/'off' (also yes/no, true/false, 1/0), or a one-line ConfigError naming the setting."""
    text = value.strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"{name}: {value!r} is not on or off")


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate_limit(value: str) -> tuple[int, float] | None:
    """NEWSLETTER_SIGNUP_RATE_LIMIT: '5/10m' -> (5, 600.0); 'off' -> None (no limit)."""
    if value.lower() in ("off", "none", "0"):
        return None
    count, _, window = value.replace(" ", "").partition("/")
    unit = window[-1:].lower() if window[-1:].isalpha() else "s"
    number = window[:-1] if window[-1:].isalpha() else window
    try:
        limit, seconds = int(count), float(number or "1") * _UNIT_SECONDS[unit]
    except (ValueError, KeyError):
        limit, seconds = 0, 0.0
    if limit < 1 or seconds <= 0 or not window:
        raise ConfigError(
            f"NEWSLETTER_SIGNUP_RATE_LIMIT: {value!r} is not a limit like '5/10m' "
            "(signups per IP address per 10 minutes) or 'off'"
        )
    return limit, seconds


def parse_database_url(value: str) -> str:
    """NEWSLETTER_DATABASE_URL: any SQLAlchemy URL; a bare file name is refused."""
    if "://" not in value:
        raise ConfigError(f"NEWSLETTER_DATABASE_URL: {value!r} is not a URL like sqlite:///file.db")
    return value


def parse_base_url(value: str) -> str:
    """NEWSLETTER_BASE_URL: an http(s) URL with a host, without its trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"NEWSLETTER_BASE_URL: {value!r} is not an http(s) URL")
    return value.rstrip("/")


def parse_secret_key(value: str) -> Secret:
    """NEWSLETTER_SECRET_KEY: at least 16 characters, never shown."""
    if len(value) < 16:
        raise ConfigError("NEWSLETTER_SECRET_KEY: too short (use at least 16 characters)")
    return Secret(value)


def parse_dkim_selector(value: str) -> str:
    """NEWSLETTER_DKIM_SELECTOR: DNS labels, as in <selector>._domainkey.<domain>."""
    if not all(part.isalnum() or "-" in part or "_" in part for part in value.split(".")):
        raise ConfigError(f"NEWSLETTER_DKIM_SELECTOR: {value!r} is not a DNS label like 'news2026'")
    return value


def parse_bounce_address(value: str) -> str:
    """NEWSLETTER_BOUNCE_ADDRESS: a bare address (no display name)."""
    name, addr = parseaddr(value)
    if "@" not in addr or name:
        raise ConfigError(
            f"NEWSLETTER_BOUNCE_ADDRESS: {value!r} is not a bare address like bounces@example.org"
        )
    return addr


def parse_bounce_imap_url(value: str) -> Secret:
    """NEWSLETTER_BOUNCE_IMAP_URL: imaps:// or imap+starttls:// (TLS is required); it holds
    a password, so it is never shown."""
    if urlsplit(value).scheme not in ("imaps", "imap+starttls"):
        raise ConfigError(
            "NEWSLETTER_BOUNCE_IMAP_URL: use imaps://user:pass@host/Mailbox "
            "or imap+starttls://... (TLS is required)"
        )
    return Secret(value)


def parse_min_interval(value: str) -> timedelta | None:
    """NEWSLETTER_MIN_INTERVAL: an interval, or None for 'off' (no minimum)."""
    return parse_interval(value) or None
