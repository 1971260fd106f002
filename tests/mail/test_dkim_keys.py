"""DKIM keys: keygen as a user runs it, and every bad key setting refused in one line.

The signing itself, verified by dkimpy, is in test_dkim.py.
"""

from __future__ import annotations

import base64
import re
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from newsletter.db import open_database
from newsletter.errors import ConfigError
from newsletter.mail.dkimkey import GeneratedKey
from newsletter.mail.message import MessageTemplate
from tests.support.helpers import (
    BASE_ENV,
    SAMPLE_FEED,
    add_subscribers,
    deliveries,
    key_pem,
    many,
    settings_for,
)
from tests.support.helpers import run_cli as cli
from tests.support.smtpserver import SMTPServer

# ---- keygen through the CLI ---------------------------------------------------


def test_keygen_writes_a_private_key_and_prints_the_record(tmp_path: Path) -> None:
    done = cli(tmp_path, "dkim", "keygen", "--selector", "s2026", **BASE_ENV)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "dkim-s2026.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048

    line = next(x.strip() for x in done.stdout.splitlines() if "._domainkey." in x)
    match = re.fullmatch(r's2026\._domainkey\.endseclusion\.org TXT ((?:"[^"]*" ?)+)', line)
    assert match, line
    strings = re.findall(r'"([^"]*)"', match.group(1))
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert len(strings[0]) == 255  # split as DNS requires, not before
    value = "".join(strings)
    assert value.startswith("v=DKIM1; k=rsa; p=")
    public = serialization.load_der_public_key(base64.b64decode(value.split("p=", 1)[1]))
    assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]

    assert f"NEWSLETTER_DKIM_PRIVATE_KEY={path.resolve()}" in done.stdout
    assert "NEWSLETTER_DKIM_SELECTOR=s2026" in done.stdout


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "key.pem"
    out.write_text("precious")
    done = cli(tmp_path, "dkim", "keygen", "--out", str(out), **BASE_ENV)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and "Traceback" not in done.stderr
    assert out.read_text() == "precious"


def test_keygen_needs_a_domain_and_a_valid_selector(tmp_path: Path) -> None:
    no_from = cli(tmp_path, "dkim", "keygen")
    assert no_from.returncode == 1 and "NEWSLETTER_FROM" in no_from.stderr
    assert len(no_from.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.pem"))
    bad = cli(tmp_path, "dkim", "keygen", "--selector", "a b", "--domain", "endseclusion.org")
    assert bad.returncode == 2
    ok = cli(tmp_path, "dkim", "keygen", "--domain", "example.org", "--out", "k.pem")
    assert ok.returncode == 0 and "._domainkey.example.org TXT" in ok.stdout


# ---- bad key settings --------------------------------------------------------------


def _bad_keys(tmp_path: Path, key: GeneratedKey) -> list[tuple[dict[str, str], str, str]]:
    """(settings, the setting named, words of the message) for every bad configuration."""
    (tmp_path / "garbage.pem").write_text("not a key\n")
    (tmp_path / "ec.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "ed.pem").write_bytes(key_pem(ed25519.Ed25519PrivateKey.generate()))
    private = serialization.load_pem_private_key(key.path.read_bytes(), password=None)
    (tmp_path / "locked.pem").write_bytes(key_pem(private, passphrase=b"secret"))
    (tmp_path / "folder.pem").mkdir()
    k, s = "NEWSLETTER_DKIM_PRIVATE_KEY", "NEWSLETTER_DKIM_SELECTOR"
    selector = key.selector
    return [
        ({k: str(key.path)}, s, "needs both"),
        ({s: selector}, k, "needs both"),
        ({k: str(tmp_path / "missing.pem"), s: selector}, k, "no such file"),
        ({k: str(tmp_path / "folder.pem"), s: selector}, k, "cannot read"),
        ({k: str(tmp_path / "garbage.pem"), s: selector}, k, "not a PEM private key"),
        ({k: str(tmp_path / "ec.pem"), s: selector}, k, "EC key, not RSA"),
        ({k: str(tmp_path / "ed.pem"), s: selector}, k, "Ed25519 key, not RSA"),
        ({k: str(tmp_path / "locked.pem"), s: selector}, k, "passphrase"),
    ]


def test_bad_key_settings_are_one_line_config_errors(tmp_path: Path, key: GeneratedKey) -> None:
    for env, setting, words in _bad_keys(tmp_path, key):
        settings = settings_for(tmp_path, **env)
        with pytest.raises(ConfigError) as caught:
            MessageTemplate(settings, subject="Hi", html="x", text="x", issue_id=1)
        message = caught.value.message
        assert message.startswith(setting) and words in message, message
        assert "\n" not in message


def test_send_with_a_bad_key_exits_1_and_sends_nothing(
    tmp_path: Path, smtp_server: SMTPServer, key: GeneratedKey
) -> None:
    shutil.copy(SAMPLE_FEED, tmp_path / "feed.xml")
    (tmp_path / "ec.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    lines = [f'{k}="{v}"' for k, v in BASE_ENV.items()]
    lines += [
        "NEWSLETTER_FEED_URL=feed.xml",
        f"NEWSLETTER_SMTP_URL={smtp_server.url}",
        "NEWSLETTER_DKIM_PRIVATE_KEY=ec.pem",
        f"NEWSLETTER_DKIM_SELECTOR={key.selector}",
    ]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    engine = open_database(f"sqlite:///{tmp_path / 'subscribers.db'}")
    add_subscribers(engine, many(3))
    done = cli(tmp_path, "send")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: NEWSLETTER_DKIM_PRIVATE_KEY")
    assert "Traceback" not in done.stderr
    assert smtp_server.messages == [] and smtp_server.transactions == 0
    assert "sent" not in set(deliveries(engine).values())
    engine.dispose()
