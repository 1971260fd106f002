"""Settings: the environment, then `.env` in the working directory, then defaults.

Loaded once by the edge (CLI or web app) into a `Settings` object that is
passed down; nothing reads the environment at import time. A malformed value
is a `ConfigError` naming the setting (each value's parser is in
settingvalues.py; `PARSERS` says which setting gets which), and so is an
unknown `NEWSLETTER_*` name (a typo must not silently fall back to a default).
Settings needed only by some commands (the feed, the From address...) are
checked by `Settings.require`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from email.headerregistry import Address
from functools import partial
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from newsletter.errors import ConfigError, MissingSettings
from newsletter.settingvalues import (
    Secret,
    SmtpConfig,
    issue_per_mode,
    on_off,
    parse_base_url,
    parse_bounce_address,
    parse_bounce_imap_url,
    parse_database_url,
    parse_dkim_selector,
    parse_from_address,
    parse_min_interval,
    parse_rate_limit,
    parse_retry_delays,
    parse_secret_key,
    parse_smtp_url,
    positive_float,
    positive_int,
    story_content_mode,
)

DEFAULT_DATABASE_URL = "sqlite:///subscribers.db"
DEFAULT_BASE_URL = "http://localhost:8000"


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


#: How each setting's text becomes its value (str: kept as it is). Every field of
#: `Settings` is listed: a new one must say how it is parsed.
PARSERS: dict[str, Callable[[str], Any]] = {
    "feed_url": str,
    "database_url": parse_database_url,
    "smtp": parse_smtp_url,
    "outbox": Path,
    "from_address": parse_from_address,
    "base_url": parse_base_url,
    "secret_key": parse_secret_key,
    "postal_address": str,
    "templates_dir": Path,
    "smtp_connections": partial(positive_int, "NEWSLETTER_SMTP_CONNECTIONS"),
    "smtp_timeout": partial(positive_float, "NEWSLETTER_SMTP_TIMEOUT"),
    "smtp_data_timeout": partial(positive_float, "NEWSLETTER_SMTP_DATA_TIMEOUT"),
    "send_rate": partial(positive_float, "NEWSLETTER_SEND_RATE"),
    "retry_delays": parse_retry_delays,
    "retry_max_age_hours": partial(positive_float, "NEWSLETTER_RETRY_MAX_AGE_HOURS"),
    "list_name": str,
    "dkim_private_key": Path,
    "dkim_selector": parse_dkim_selector,
    "bounce_address": parse_bounce_address,
    "bounce_imap_url": parse_bounce_imap_url,
    "signup_rate_limit": parse_rate_limit,
    "story_content": story_content_mode,
    "issue_per": issue_per_mode,
    "min_interval": parse_min_interval,
    "welcome": partial(on_off, "NEWSLETTER_WELCOME"),
}


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> Settings:
    """Read and validate every setting once; an unknown NEWSLETTER_* name is an error."""
    check_names(name_sources(environ, env_file))
    raw = read_environment(environ, env_file)

    kwargs: dict[str, Any] = {}
    for setting in fields(Settings):
        text = raw.get(ENV_NAMES[setting.name])
        if text:
            kwargs[setting.name] = PARSERS[setting.name](text)
    return Settings(**kwargs)
