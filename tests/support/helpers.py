"""Small builders shared by the send tests: settings, a database, subscribers."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from subprocess import CompletedProcess, Popen

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from newsletter.config import Settings, load_settings
from newsletter.db import open_database, write_session
from newsletter.errors import FeedError
from newsletter.models import Subscriber, SubscriberStatus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SAMPLE_FEED = EXAMPLES / "aasr-feed.xml"
NEXT_FEED = EXAMPLES / "aasr-feed-next.xml"

BASE_ENV = {
    "NEWSLETTER_FROM": "AASR <news@endseclusion.org>",
    "NEWSLETTER_POSTAL_ADDRESS": "AASR, PO Box 1234, Springfield, VA 22150, USA",
    "NEWSLETTER_BASE_URL": "https://news.endseclusion.org",
    "NEWSLETTER_RETRY_DELAYS": "0",
}


#: Set by the `db_backend` fixture (tests/conftest.py) while a test runs on PostgreSQL.
#: An environment variable, not a global: this module is imported both as `helpers`
#: and as `tests.support.helpers`, and the two copies must agree.
TEST_DATABASE_ENV = "NLTEST_DATABASE_URL"


def use_database(url: str | None) -> None:
    """Route `settings_for` and `database_url` to `url` (None: a SQLite file per test)."""
    if url is None:
        os.environ.pop(TEST_DATABASE_ENV, None)
    else:
        os.environ[TEST_DATABASE_ENV] = url


def database_url(tmp_path: Path, name: str = "subscribers.db") -> str:
    """The test's database: the PostgreSQL one of `db_backend`, else a SQLite file in tmp_path."""
    return os.environ.get(TEST_DATABASE_ENV) or f"sqlite:///{tmp_path / name}"


def backend() -> str:
    return "postgresql" if os.environ.get(TEST_DATABASE_ENV) else "sqlite"


def settings_for(tmp_path: Path, **env: str) -> Settings:
    """Settings for a test: the sample feed copied into tmp_path, the test's database."""
    feed = tmp_path / "feed.xml"
    if not feed.exists():
        shutil.copy(SAMPLE_FEED, feed)
    values = {
        **BASE_ENV,
        "NEWSLETTER_FEED_URL": str(feed),
        "NEWSLETTER_DATABASE_URL": database_url(tmp_path),
        "NEWSLETTER_OUTBOX": str(tmp_path / "outbox"),
        **env,
    }
    return load_settings(environ=values, env_file=tmp_path / "no.env")


def database(settings: Settings) -> Engine:
    return open_database(settings.database_url)


def add_subscribers(
    engine: Engine,
    emails: list[str],
    *,
    status: str = SubscriberStatus.ACTIVE,
    names: Mapping[str, str] | None = None,
) -> None:
    """One subscriber per address; `names` gives some of them a display name."""
    names = names or {}
    with write_session(engine) as session:
        for address in emails:
            session.add(
                Subscriber(
                    email=address,
                    email_key=address.lower(),
                    name=names.get(address),
                    status=status,
                    token=secrets.token_urlsafe(16),
                )
            )


def many(n: int, domain: str = "example.org") -> list[str]:
    return [f"reader{i:05d}@{domain}" for i in range(n)]


def table_dump(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, to show that a failed command changed nothing."""
    out: dict[str, list[tuple[object, ...]]] = {}
    with engine.connect() as conn:
        for name in sa.inspect(conn).get_table_names():
            query = sa.text(f'SELECT * FROM "{name}"')  # noqa: S608 - names from the inspector
            out[name] = [tuple(r) for r in conn.execute(query)]
    return out


def deliveries(engine: Engine) -> dict[str, str]:
    """email -> delivery status, over all issues (tests use one issue at a time)."""
    query = sa.text(
        "SELECT s.email, d.status FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).all())


def subscriber_status(engine: Engine, email: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT status FROM subscriber WHERE email = :e"), {"e": email}
        ).scalar_one()


ROOT = EXAMPLES.parent


def run_cli(cwd: Path, *args: str, timeout: float = 120, **env: str) -> CompletedProcess[str]:
    """`python -m newsletter ARGS` as a user runs it: a real process, this checkout's code,
    no NEWSLETTER_* settings from the outer environment but those given."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_send(site: Path, env: dict[str, str]) -> Popen[str]:
    """A `newsletter send` running in the background (for kill -9 and overlap tests)."""
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send"],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_error_line(result: CompletedProcess[str]) -> str:
    """The single `Error: ...` line of a clean failure: exit 1, one stderr line, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def assert_one_line_error(error: pytest.ExceptionInfo[FeedError], *needles: str) -> None:
    """A feed error is one line, no traceback, naming each needle (shared by the feed tests)."""
    message = str(error.value)
    assert message.splitlines() == [message]
    assert "Traceback" not in message
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)


def silent_udp_port() -> socket.socket:
    """A bound UDP socket that never answers: a DNS server that has gone away."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def dkim_record(path: Path) -> str:
    """The DKIM TXT record of a PEM key, built here independently of the code under test."""
    public = serialization.load_pem_private_key(path.read_bytes(), password=None).public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def content_mode_settings(tmp_path: Path, mode: str | None = None) -> Settings:
    """Settings for the content-mode tests: no custom templates, NEWSLETTER_STORY_CONTENT=mode."""
    environ = {
        "NEWSLETTER_FROM": "AASR <news@endseclusion.org>",
        "NEWSLETTER_BASE_URL": "https://news.endseclusion.org",
        "NEWSLETTER_POSTAL_ADDRESS": "AASR, PO Box 1234, Springfield, IL 62701, USA",
        "NEWSLETTER_TEMPLATES_DIR": str(tmp_path / "no-custom-templates"),
    }
    if mode is not None:
        environ["NEWSLETTER_STORY_CONTENT"] = mode
    return load_settings(environ=environ, env_file=tmp_path / "missing.env")
