"""Checks that need no network: the settings, the public base URL, the outbox folder."""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from newsletter.config import ENV_NAMES, Settings, load_settings, read_environment
from newsletter.doctor.report import Check, Status
from newsletter.errors import ConfigError
from newsletter.mail.verp import check_verp_settings

REQUIRED = {"send": ("feed_url", "from_address", "postal_address"), "serve": ("from_address",)}
_ENV_PREFIX = re.compile(r"^(NEWSLETTER_[A-Z0-9_]+)")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1 and localhost: a local relay or a development setup."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_settings_leniently(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> tuple[Settings, dict[str, str]]:
    """Load settings, dropping each malformed one, so doctor reports all of them and goes on.

    Returns the settings and {NEWSLETTER_NAME: error message} for the dropped ones.
    """
    raw = read_environment(environ, env_file)
    errors: dict[str, str] = {}
    for _ in range(len(ENV_NAMES) + 1):
        try:
            # the .env file is already merged into `raw`; os.devnull is no file: read nothing more
            return load_settings(environ=raw, env_file=Path(os.devnull)), errors
        except ConfigError as exc:
            match = _ENV_PREFIX.match(exc.message)
            if match is None or match.group(1) not in raw:
                errors["settings"] = exc.message
                break
            errors[match.group(1)] = exc.message
            del raw[match.group(1)]
    return Settings(), errors


def check_settings(settings: Settings, errors: Mapping[str, str]) -> Check:
    """Malformed settings, then the ones `send` and `serve` need, each by name."""
    parts: list[str] = [f"malformed {msg}" for msg in errors.values()]
    for command, attrs in REQUIRED.items():
        missing = [ENV_NAMES[a] for a in attrs if getattr(settings, a) in (None, "")]
        missing = [name for name in missing if name not in errors]
        if missing:
            parts.append(f"missing for `newsletter {command}`: {', '.join(missing)}")
    if "NEWSLETTER_BOUNCE_ADDRESS" not in errors:
        try:
            check_verp_settings(settings)  # bounce addresses need NEWSLETTER_SECRET_KEY
        except ConfigError as exc:
            parts.append(exc.message)
    if parts:
        return Check(
            "settings",
            Status.FAIL,
            "; ".join(parts),
            "set them in the environment or in .env (see .env.example)",
        )
    return Check("settings", Status.OK, "everything `newsletter send` and `serve` need is set")


def check_base_url(settings: Settings) -> Check:
    """Links in every email point here: readers must reach it, over https."""
    url = settings.base_url
    host = urlsplit(url).hostname or ""
    if host == "localhost" or is_loopback(host):
        return Check(
            "base-url",
            Status.WARN,
            f"NEWSLETTER_BASE_URL is {url}: unsubscribe and signup links in emails "
            "would point to this machine, readers cannot open them",
            "for production set NEWSLETTER_BASE_URL=https://<public address of newsletter serve>",
        )
    if urlsplit(url).scheme != "https":
        return Check(
            "base-url",
            Status.WARN,
            f"NEWSLETTER_BASE_URL {url} is not https: unsubscribe links travel in clear text "
            "and Gmail and Yahoo expect an https one-click unsubscribe link",
            "serve `newsletter serve` behind an https reverse proxy and set an https:// URL",
        )
    return Check("base-url", Status.OK, f"NEWSLETTER_BASE_URL {url} is https")


def check_outbox(folder: Path) -> Check:
    """Without SMTP, `send` writes .eml files: the folder must be writable (or creatable)."""
    where = folder.resolve()
    hint = "set NEWSLETTER_SMTP_URL to deliver emails"
    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                pass
        except OSError as exc:
            return Check(
                "outbox",
                Status.FAIL,
                f"outbox folder {where} is not writable: {exc.strerror}",
                "fix its permissions or set NEWSLETTER_OUTBOX",
            )
        state = "writable"
    elif folder.exists():
        return Check(
            "outbox", Status.FAIL, f"outbox {where} is not a folder", "set NEWSLETTER_OUTBOX"
        )
    else:
        parent = next((p for p in where.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return Check(
                "outbox",
                Status.FAIL,
                f"outbox folder {where} does not exist and cannot be created in {parent}",
                "create it or set NEWSLETTER_OUTBOX",
            )
        state = "will be created"
    return Check(
        "outbox",
        Status.WARN,
        f"NEWSLETTER_SMTP_URL is not set: emails are written to {where} ({state}), "
        "nobody receives them",
        hint,
    )
