"""Settings: environment over .env over defaults; malformed values name the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from newsletter.config import ENV_NAMES, Secret, load_settings, parse_smtp_url
from newsletter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, env_file=tmp_path / "none")
    assert settings.database_url == "sqlite:///subscribers.db"
    assert settings.smtp is None
    assert settings.outbox == Path("outbox")
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


def test_require_names_the_missing_setting(tmp_path: Path) -> None:
    settings = load_settings(environ={}, env_file=tmp_path / "none")
    with pytest.raises(ConfigError, match="NEWSLETTER_FEED_URL is not set"):
        settings.require("feed_url")


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
