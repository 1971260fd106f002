"""Settings: environment over .env over defaults; malformed values name the setting."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from newsletter.config import (
    ENV_NAMES,
    PARSERS,
    Settings,
    known_names,
    load_settings,
    nearest_setting,
)
from newsletter.errors import ConfigError, MissingSettings
from newsletter.settingvalues import Secret, parse_smtp_url

ROOT = Path(__file__).resolve().parents[2]


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, env_file=tmp_path / "none")
    assert settings.database_url == "sqlite:///subscribers.db"
    assert settings.smtp is None
    assert settings.outbox is None  # the outbox is asked for, never a fallback
    assert settings.base_url == "http://localhost:8000"
    assert settings.templates_dir == Path("templates")


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("NEWSLETTER_FEED_URL=from-file.xml\nNEWSLETTER_OUTBOX=box\n")
    settings = load_settings(environ={"NEWSLETTER_FEED_URL": "from-env.xml"}, env_file=env_file)
    assert settings.feed_url == "from-env.xml"
    assert settings.outbox == Path("box")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("NEWSLETTER_FROM", "not an address", "NEWSLETTER_FROM"),
        ("NEWSLETTER_FROM", "a@b\r\nBcc: x@y.z", "NEWSLETTER_FROM"),
        ("NEWSLETTER_SMTP_URL", "http://mail.example.org", "unknown scheme"),
        ("NEWSLETTER_SMTP_URL", "smtp://host:notaport", "bad port"),
        ("NEWSLETTER_BASE_URL", "ftp://x", "NEWSLETTER_BASE_URL"),
        ("NEWSLETTER_SMTP_CONNECTIONS", "zero", "NEWSLETTER_SMTP_CONNECTIONS"),
        ("NEWSLETTER_SMTP_CONNECTIONS", "0", "at least 1"),
        ("NEWSLETTER_SEND_RATE", "-3", "NEWSLETTER_SEND_RATE"),
        ("NEWSLETTER_RETRY_DELAYS", "soon", "NEWSLETTER_RETRY_DELAYS"),
        ("NEWSLETTER_SECRET_KEY", "short", "NEWSLETTER_SECRET_KEY"),
        ("NEWSLETTER_DATABASE_URL", "subscribers.db", "NEWSLETTER_DATABASE_URL"),
    ],
)
def test_malformed_settings_name_themselves(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(environ={name: value}, env_file=tmp_path / "none")
    assert "\n" not in caught.value.message


def test_require_names_every_missing_setting_at_once(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"NEWSLETTER_FROM": "a@example.org"}, env_file=tmp_path / "none"
    )
    with pytest.raises(MissingSettings) as caught:
        settings.require("feed_url", "from_address", "postal_address")
    assert caught.value.names == ("NEWSLETTER_FEED_URL", "NEWSLETTER_POSTAL_ADDRESS")
    assert "(" not in caught.value.message


def test_a_delivering_command_needs_smtp_or_an_outbox_asked_for(tmp_path: Path) -> None:
    bare = load_settings(environ={}, env_file=tmp_path / "none")
    bare.require()  # nothing asked, nothing missing
    with pytest.raises(MissingSettings) as caught:
        bare.require(destination=True)
    assert caught.value.names == ("NEWSLETTER_SMTP_URL or NEWSLETTER_OUTBOX",)
    for env in ({"NEWSLETTER_OUTBOX": "box"}, {"NEWSLETTER_SMTP_URL": "smtp://127.0.0.1:2525"}):
        load_settings(environ=env, env_file=tmp_path / "none").require(destination=True)


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_an_unknown_name_is_an_error_naming_the_nearest_setting(tmp_path: Path, where: str) -> None:
    """A typo must not fall back to a default (it sent an issue to the outbox)."""
    env_file = tmp_path / ".env"
    typo = {"NEWSLETTER_SMPT_URL": "smtp://mail.example.org"}
    if where == ".env":
        env_file.write_text("NEWSLETTER_FEED_URL=feed.xml\nNEWSLETTER_SMPT_URL=smtp://x\n")
        typo = {}
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=typo, env_file=env_file)
    assert caught.value.message == (
        "NEWSLETTER_SMPT_URL is not a setting; did you mean NEWSLETTER_SMTP_URL?"
    )
    expected = str(env_file.resolve()) if where == ".env" else "the environment"
    assert caught.value.hint == f"It is set in {expected}."


def test_an_unknown_name_far_from_any_setting_points_to_the_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"NEWSLETTER_XYZZY is not a setting .see .env.example"):
        load_settings(environ={"NEWSLETTER_XYZZY": "1"}, env_file=tmp_path / "none")
    assert nearest_setting("NEWSLETTER_OUTBOXX") == "NEWSLETTER_OUTBOX"
    assert nearest_setting("NEWSLETTER_DATABASE") == "NEWSLETTER_DATABASE_URL"


def test_known_names_follow_the_settings_definition() -> None:
    """A field added to Settings is a known name without a second list to keep in step."""
    assert set(ENV_NAMES) == {f.name for f in fields(Settings)}
    assert set(ENV_NAMES.values()) <= known_names()
    assert ENV_NAMES["smtp"] == "NEWSLETTER_SMTP_URL" and ENV_NAMES["from_address"] == (
        "NEWSLETTER_FROM"
    )


def test_names_of_the_cli_and_the_test_harness_are_not_typos(tmp_path: Path) -> None:
    env = {
        "NEWSLETTER_DNS_SERVER": "127.0.0.1:53",  # doctor --dns-server
        "NEWSLETTER_TEST_POSTGRES_URL": "postgresql+psycopg://x@h/db",
        "NEWSLETTER_STRICT_SERVICES": "1",
    }
    load_settings(environ=env, env_file=tmp_path / "none")


def test_smtp_url_parsing_keeps_the_password_secret() -> None:
    cfg = parse_smtp_url("smtp+starttls://news%40x.org:p%40ss@mail.x.org")
    assert (cfg.host, cfg.port, cfg.security, cfg.username) == (
        "mail.x.org",
        587,
        "starttls",
        "news@x.org",
    )
    assert isinstance(cfg.password, Secret) and cfg.password == "p@ss"
    assert "p@ss" not in repr(cfg) and "p@ss" not in cfg.display
    assert parse_smtp_url("smtps://h").port == 465
    assert parse_smtp_url("smtp://h").port == 25


def test_list_id_is_derived_from_the_from_address(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"NEWSLETTER_FROM": "AASR <News@EndSeclusion.org>"}, env_file=tmp_path / "none"
    )
    assert settings.list_id == '"AASR" <news.endseclusion.org>'
    assert settings.from_domain == "endseclusion.org"


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"NEWSLETTER_[A-Z_]+", (ROOT / ".env.example").read_text()))
    assert set(ENV_NAMES.values()) <= documented
    assert documented <= set(ENV_NAMES.values())


def test_every_setting_names_its_parser() -> None:
    """A new field of Settings without a parser would only fail once someone sets it."""
    assert set(PARSERS) == {setting.name for setting in fields(Settings)}
