"""Settings: the environment, then `.env` in the working directory, then defaults.

Loaded once by the edge (CLI or web app) into a `Settings` object that is
passed down; nothing reads the environment at import time. A malformed value
is a `ConfigError` naming the setting, and so is an unknown `NEWSLETTER_*` name
(a typo must not silently fall back to a default). Settings needed only by some
commands (the feed, the From address...) are checked by `Settings.require`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dotenv import dotenv_values

from newsletter.errors import ConfigError, MissingSettings

DEFAULT_DATABASE_URL = "sqlite:///subscribers.db"
DEFAULT_BASE_URL = "http://localhost:8000"


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


def _parse_from(value: str) -> Address:
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


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, not {number}")
    return number


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if number <= 0:
        raise ConfigError(f"{name}: must be above 0, not {number}")
    return number


def _delays(value: str) -> tuple[float, ...]:
    """'5,30' -> (5.0, 30.0); '0' or 'none' turns in-run retries off."""
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


def _rate_limit(value: str) -> tuple[int, float] | None:
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


@dataclass(frozen=True)
class Settings:
    """Every setting, already validated. Build with `load_settings`."""

    feed_url: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    smtp: SmtpConfig | None = None
    outbox: Path | None = None  # set on purpose: never the fallback of a missing SMTP URL
    from_address: Address | None = None
    base_url: str = DEFAULT_BASE_URL
    secret_key: Secret | None = field(default=None, repr=False)
    postal_address: str | None = None
    templates_dir: Path = Path("templates")
    smtp_connections: int = 4
    smtp_timeout: float = 30.0
    smtp_data_timeout: float = 120.0  # the wait for the reply to the end of a message
    send_rate: float | None = None
    retry_delays: tuple[float, ...] = (5.0, 30.0)
    retry_max_age_hours: float = 72.0
    list_name: str | None = None
    dkim_private_key: Path | None = None
    dkim_selector: str | None = None
    bounce_address: str | None = None
    bounce_imap_url: str | None = field(default=None, repr=False)
    signup_rate_limit: tuple[int, float] | None = (5, 600.0)  # signups per IP (/64) per window
    story_content: str = "summary"  # one of STORY_CONTENT_MODES; `send --content` replaces it
    issue_per: str = "send"  # one of ISSUE_PER_MODES: one digest per run, or one issue per story
    min_interval: timedelta | None = None  # no new issue until this long after the last one
    welcome: bool = True  # NEWSLETTER_WELCOME: a welcome email when a signup is confirmed

    def require(self, *names: str, destination: bool = False) -> None:
        """Raise MissingSettings naming every one of `names` (attribute names) left unset.

        `destination`: the command delivers mail, so it needs NEWSLETTER_SMTP_URL or,
        asked for on purpose, NEWSLETTER_OUTBOX.
        """
        missing = [ENV_NAMES[name] for name in names if getattr(self, name) in (None, "")]
        detail = None
        if destination and self.smtp is None and self.outbox is None:
            missing.append(f"{ENV_NAMES['smtp']} or {ENV_NAMES['outbox']}")
            detail = (
                f"{ENV_NAMES['smtp']} sends by SMTP; {ENV_NAMES['outbox']} writes .eml files "
                "to a folder instead."
            )
        if missing:
            raise MissingSettings(tuple(missing), detail=detail)

    @property
    def sender(self) -> Address:
        """The From address, required: MissingSettings names NEWSLETTER_FROM when it is unset.
        Typed as set, so the code that needs it asks here instead of asserting."""
        if self.from_address is None:
            raise MissingSettings((ENV_NAMES["from_address"],))
        return self.from_address

    @property
    def from_domain(self) -> str:
        return self.sender.domain

    @property
    def list_title(self) -> str:
        """Human name of the list: NEWSLETTER_LIST_NAME, else the From display name."""
        if self.list_name:
            return self.list_name
        if self.from_address and self.from_address.display_name:
            return self.from_address.display_name
        return "Newsletter"

    @property
    def list_id(self) -> str:
        """RFC 2919 List-Id value, derived from the From address."""
        sender = self.sender
        ident = f"{sender.username}.{sender.domain}".lower()
        ident = "".join(c if c.isalnum() or c in ".-" else "-" for c in ident)
        title = "".join(c for c in self.list_title if c.isprintable() and c not in '"\\<>')
        return f'"{title}" <{ident}>' if title else f"<{ident}>"

    def url(self, path: str) -> str:
        """An absolute public URL under NEWSLETTER_BASE_URL."""
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


ENV_NAMES = {
    "feed_url": "NEWSLETTER_FEED_URL",
    "database_url": "NEWSLETTER_DATABASE_URL",
    "smtp": "NEWSLETTER_SMTP_URL",
    "outbox": "NEWSLETTER_OUTBOX",
    "from_address": "NEWSLETTER_FROM",
    "base_url": "NEWSLETTER_BASE_URL",
    "secret_key": "NEWSLETTER_SECRET_KEY",
    "postal_address": "NEWSLETTER_POSTAL_ADDRESS",
    "templates_dir": "NEWSLETTER_TEMPLATES_DIR",
    "smtp_connections": "NEWSLETTER_SMTP_CONNECTIONS",
    "smtp_timeout": "NEWSLETTER_SMTP_TIMEOUT",
    "smtp_data_timeout": "NEWSLETTER_SMTP_DATA_TIMEOUT",
    "send_rate": "NEWSLETTER_SEND_RATE",
    "retry_delays": "NEWSLETTER_RETRY_DELAYS",
    "retry_max_age_hours": "NEWSLETTER_RETRY_MAX_AGE_HOURS",
    "list_name": "NEWSLETTER_LIST_NAME",
    "dkim_private_key": "NEWSLETTER_DKIM_PRIVATE_KEY",
    "dkim_selector": "NEWSLETTER_DKIM_SELECTOR",
    "bounce_address": "NEWSLETTER_BOUNCE_ADDRESS",
    "bounce_imap_url": "NEWSLETTER_BOUNCE_IMAP_URL",
    "signup_rate_limit": "NEWSLETTER_SIGNUP_RATE_LIMIT",
}


# A setting added to `Settings` is known as NEWSLETTER_<FIELD NAME> unless ENV_NAMES
# above names it otherwise: the list of known names follows the Settings definition.
for _field in fields(Settings):
    ENV_NAMES.setdefault(_field.name, f"NEWSLETTER_{_field.name.upper()}")
del _field

#: NEWSLETTER_* names that are not settings but are read by someone else: a CLI
#: option's environment variable (`doctor --dns-server`) and the project's own test
#: and benchmark harness.
OTHER_NAMES = frozenset({"NEWSLETTER_DNS_SERVER", "NEWSLETTER_STRICT_SERVICES"})
OTHER_PREFIXES = ("NEWSLETTER_TEST_", "NEWSLETTER_BENCH_")


def known_names() -> frozenset[str]:
    """Every NEWSLETTER_* name a user may set (computed when asked: settings can be added)."""
    return frozenset(ENV_NAMES.values()) | OTHER_NAMES


def nearest_setting(name: str) -> str | None:
    """The known setting `name` was most likely meant to be (a typo), if any is close."""
    settings = sorted(set(ENV_NAMES.values()))
    tails = {known.removeprefix("NEWSLETTER_"): known for known in settings}
    close = difflib.get_close_matches(name.removeprefix("NEWSLETTER_"), tails, n=1, cutoff=0.6)
    return tails[close[0]] if close else None


def check_names(names: Mapping[str, str]) -> None:
    """ConfigError for the first unknown NEWSLETTER_* name; `names` maps it to where it is set."""
    known = known_names()
    for name in sorted(names):
        if name in known or name.startswith(OTHER_PREFIXES):
            continue
        nearest = nearest_setting(name)
        guess = f"; did you mean {nearest}?" if nearest else " (see .env.example for the list)."
        raise ConfigError(f"{name} is not a setting{guess}", hint=f"It is set in {names[name]}.")


def _dotenv(env_file: Path) -> dict[str, str | None]:
    return dict(dotenv_values(env_file)) if env_file.is_file() else {}


def read_environment(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> dict[str, str]:
    """Merge the environment over the .env file (environment wins)."""
    environ = os.environ if environ is None else environ
    env_file = Path(".env") if env_file is None else env_file
    values: dict[str, str] = {k: v for k, v in _dotenv(env_file).items() if v is not None}
    values.update({k: v for k, v in environ.items() if k.startswith("NEWSLETTER_")})
    return {k: v.strip() for k, v in values.items() if k.startswith("NEWSLETTER_")}


def name_sources(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> dict[str, str]:
    """{NEWSLETTER_* name: where it is set} for the environment and the .env file."""
    environ = os.environ if environ is None else environ
    env_file = Path(".env") if env_file is None else env_file
    where = {k: str(env_file.resolve()) for k in _dotenv(env_file) if k.startswith("NEWSLETTER_")}
    where.update({k: "the environment" for k in environ if k.startswith("NEWSLETTER_")})
    return where


def describe_env_file(env_file: Path | None = None) -> str:
    """Which .env file settings were read from, for error messages."""
    env_file = Path(".env") if env_file is None else env_file
    if env_file.is_file():
        return f"Read {env_file.resolve()}"
    return f"No .env file in {env_file.resolve().parent}"


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> Settings:
    """Read and validate every setting once; an unknown NEWSLETTER_* name is an error."""
    check_names(name_sources(environ, env_file))
    raw = read_environment(environ, env_file)

    def get(attr: str) -> str | None:
        value = raw.get(ENV_NAMES[attr])
        return value if value else None

    kwargs: dict[str, Any] = {}  # each value parsed to its field's type just above its line
    if (v := get("feed_url")) is not None:
        kwargs["feed_url"] = v
    if (v := get("database_url")) is not None:
        if "://" not in v:
            raise ConfigError(f"NEWSLETTER_DATABASE_URL: {v!r} is not a URL like sqlite:///file.db")
        kwargs["database_url"] = v
    if (v := get("smtp")) is not None:
        kwargs["smtp"] = parse_smtp_url(v)
    if (v := get("outbox")) is not None:
        kwargs["outbox"] = Path(v)
    if (v := get("from_address")) is not None:
        kwargs["from_address"] = _parse_from(v)
    if (v := get("base_url")) is not None:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"NEWSLETTER_BASE_URL: {v!r} is not an http(s) URL")
        kwargs["base_url"] = v.rstrip("/")
    if (v := get("secret_key")) is not None:
        if len(v) < 16:
            raise ConfigError("NEWSLETTER_SECRET_KEY: too short (use at least 16 characters)")
        kwargs["secret_key"] = Secret(v)
    if (v := get("postal_address")) is not None:
        kwargs["postal_address"] = v
    if (v := get("templates_dir")) is not None:
        kwargs["templates_dir"] = Path(v)
    if (v := get("smtp_connections")) is not None:
        kwargs["smtp_connections"] = _positive_int("NEWSLETTER_SMTP_CONNECTIONS", v)
    if (v := get("smtp_timeout")) is not None:
        kwargs["smtp_timeout"] = _positive_float("NEWSLETTER_SMTP_TIMEOUT", v)
    if (v := get("smtp_data_timeout")) is not None:
        kwargs["smtp_data_timeout"] = _positive_float("NEWSLETTER_SMTP_DATA_TIMEOUT", v)
    if (v := get("send_rate")) is not None:
        kwargs["send_rate"] = _positive_float("NEWSLETTER_SEND_RATE", v)
    if (v := get("retry_delays")) is not None:
        kwargs["retry_delays"] = _delays(v)
    if (v := get("retry_max_age_hours")) is not None:
        kwargs["retry_max_age_hours"] = _positive_float("NEWSLETTER_RETRY_MAX_AGE_HOURS", v)
    if (v := get("list_name")) is not None:
        kwargs["list_name"] = v
    if (v := get("dkim_private_key")) is not None:
        kwargs["dkim_private_key"] = Path(v)
    if (v := get("dkim_selector")) is not None:
        if not all(part.isalnum() or "-" in part or "_" in part for part in v.split(".")):
            raise ConfigError(f"NEWSLETTER_DKIM_SELECTOR: {v!r} is not a DNS label like 'news2026'")
        kwargs["dkim_selector"] = v
    if (v := get("bounce_address")) is not None:
        name, addr = parseaddr(v)
        if "@" not in addr or name:
            raise ConfigError(
                f"NEWSLETTER_BOUNCE_ADDRESS: {v!r} is not a bare address like bounces@example.org"
            )
        kwargs["bounce_address"] = addr
    if (v := get("bounce_imap_url")) is not None:
        if urlsplit(v).scheme not in ("imaps", "imap+starttls"):
            raise ConfigError(
                "NEWSLETTER_BOUNCE_IMAP_URL: use imaps://user:pass@host/Mailbox "
                "or imap+starttls://... (TLS is required)"
            )
        kwargs["bounce_imap_url"] = Secret(v)
    if (v := get("signup_rate_limit")) is not None:
        kwargs["signup_rate_limit"] = _rate_limit(v)
    if (v := get("story_content")) is not None:
        kwargs["story_content"] = story_content_mode(v)
    if (v := get("issue_per")) is not None:
        kwargs["issue_per"] = issue_per_mode(v)
    if (v := get("min_interval")) is not None:
        kwargs["min_interval"] = parse_interval(v) or None  # 'off': no minimum
    if (v := get("welcome")) is not None:
        kwargs["welcome"] = on_off("NEWSLETTER_WELCOME", v)
    return Settings(**kwargs)
