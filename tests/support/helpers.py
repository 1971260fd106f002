"""Small builders shared by the send tests: settings, a database, subscribers."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from subprocess import CompletedProcess, Popen
from typing import TYPE_CHECKING, NamedTuple

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from sqlalchemy.engine import Engine

from newsletter.config import Settings, load_settings
from newsletter.db import alembic_config, migration_transaction, open_database, write_session
from newsletter.errors import FeedError
from newsletter.issues.feed import FeedStory
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send

if TYPE_CHECKING:
    from email.message import EmailMessage

    from tests.support.smtphandler import ReceivedMessage
    from tests.support.smtpserver import SMTPServer

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


def with_subscribers(tmp_path: Path, emails: list[str], **env: str) -> tuple[Settings, Engine]:
    """A test's settings (`settings_for`) and its database holding one active subscriber
    per address."""
    settings = settings_for(tmp_path, **env)
    engine = database(settings)
    add_subscribers(engine, emails)
    return settings, engine


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


class SentToOne(NamedTuple):
    settings: Settings
    engine: Engine
    received: ReceivedMessage


def send_to_one_reader(tmp_path: Path, smtp: SMTPServer, reader: str, **env: str) -> SentToOne:
    """The test feed's issue, sent by run_send to one subscriber through the real SMTP server:
    the email as a reader, a spam filter or a browser gets it."""
    settings, engine = with_subscribers(tmp_path, [reader], NEWSLETTER_SMTP_URL=smtp.url, **env)
    assert run_send(engine, settings, SendOptions()).error is None
    [received] = smtp.wait_for(1)
    return SentToOne(settings, engine, received)


def html_and_text(message: EmailMessage) -> tuple[str, str]:
    """The HTML and the plain-text part of a multipart/alternative email; both must be there."""
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def write_site(folder: Path, feed_url: str) -> Path:
    """A working folder as a user has it, for `newsletter` run there: a .env naming the feed,
    the outbox and the test's database, and that database with four readers."""
    lines = [f'{k}="{v}"' for k, v in BASE_ENV.items()]
    lines.append(f"NEWSLETTER_FEED_URL={feed_url}")
    lines.append("NEWSLETTER_OUTBOX=outbox")  # asked for on purpose: never a silent fallback
    lines.append(f"NEWSLETTER_DATABASE_URL={database_url(folder)}")
    (folder / ".env").write_text("\n".join(lines) + "\n")
    with site_database(folder) as engine:
        add_subscribers(engine, many(4))
    return folder


@contextmanager
def site_database(site: Path) -> Iterator[Engine]:
    """The database of a site folder, disposed of afterwards: the CLI in another process
    uses the same file, and a test must not hold its connections open."""
    engine = open_database(database_url(site))
    try:
        yield engine
    finally:
        engine.dispose()


def send_env(site: Path, smtp: SMTPServer, **more: str) -> dict[str, str]:
    """The settings of a `newsletter send` over the real SMTP server for a site folder whose
    feed is its feed.xml, on the test's database."""
    return {
        **BASE_ENV,
        "NEWSLETTER_FEED_URL": str(site / "feed.xml"),
        "NEWSLETTER_DATABASE_URL": database_url(site),
        "NEWSLETTER_SMTP_URL": smtp.url,
        **more,
    }


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


#: `python -m newsletter` with this interpreter: the CLI as a user runs it, from this checkout.
NEWSLETTER_COMMAND = (sys.executable, "-m", "newsletter")


def run_process(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], *, timeout: float = 120
) -> CompletedProcess[str]:
    """A real process in `cwd` with exactly `env`, its stdout and stderr collected as text.
    A non-zero exit is returned, not raised: the tests assert on it."""
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(**env: str) -> dict[str, str]:
    """The outer environment without its NEWSLETTER_* settings, plus `env`, with this
    checkout's code on PYTHONPATH."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update(env, PYTHONPATH=str(ROOT))
    return environ


def run_cli(cwd: Path, *args: str, timeout: float = 120, **env: str) -> CompletedProcess[str]:
    """`python -m newsletter ARGS` as a user runs it: a real process, this checkout's code,
    no NEWSLETTER_* settings from the outer environment but those given."""
    return run_process([*NEWSLETTER_COMMAND, *args], cwd, cli_env(**env), timeout=timeout)


def downgrade_to(engine: Engine, revision: str) -> None:
    """Take the database back to `revision` ("base": empty) with Alembic, as an older
    release left it."""
    from alembic import command  # only the migration tests pay for importing Alembic

    config = alembic_config(engine)
    with migration_transaction(engine) as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def start_send(site: Path, env: dict[str, str]) -> Popen[str]:
    """A `newsletter send` running in the background (for kill -9 and overlap tests)."""
    return subprocess.Popen(
        [*NEWSLETTER_COMMAND, "send"],
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


def key_pem(key: PrivateKeyTypes, passphrase: bytes | None = None) -> bytes:
    """A private key as the PKCS#8 PEM a user's key file holds (locked if a passphrase is given)."""
    locked = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase is not None
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked)


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


def feed_story(
    title: str,
    *,
    link: str = "https://endseclusion.org/story/",
    author: str | None = None,
    summary_html: str = "<p>A story.</p>",
    published_at: datetime | None = None,
) -> FeedStory:
    """One story as the feed parser hands it on (guid "1", no content, no image)."""
    return FeedStory(
        uid="guid:1",
        title=title,
        link=link,
        guid="1",
        author=author,
        summary_html=summary_html,
        content_html="",
        image_url=None,
        image_alt=None,
        published_at=published_at,
    )


@dataclass(frozen=True)
class PlainStory:
    """A story as the web archive and older callers pass it to render_issue: the fields the
    renderer reads, none of FeedStory's."""

    title: str
    link: str | None
    author: str | None
    summary_html: str
    content_html: str
    image_url: str | None
    image_alt: str | None
    published_at: datetime | None


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
