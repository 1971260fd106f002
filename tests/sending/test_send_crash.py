"""`kill -9` in the middle of a send, and two sends at once: nobody gets two copies.

Real processes (`python -m newsletter send`), a real SQLite file, a real SMTP server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from newsletter.db import open_database
from newsletter.models import DeliveryStatus
from tests.support.helpers import (
    BASE_ENV,
    SAMPLE_FEED,
    add_subscribers,
    database_url,
    deliveries,
    many,
    start_send,
)
from tests.support.smtpserver import SMTPServer

ROOT = Path(__file__).resolve().parents[2]
READERS = 120


pytestmark = pytest.mark.usefixtures("db_backend")


def _env(site: Path, server: SMTPServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(BASE_ENV)
    env.update(
        NEWSLETTER_FEED_URL=str(SAMPLE_FEED),
        NEWSLETTER_DATABASE_URL=database_url(site),
        NEWSLETTER_SMTP_URL=server.url,
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def site(tmp_path: Path) -> Path:
    engine = open_database(database_url(tmp_path))
    add_subscribers(engine, many(READERS))
    engine.dispose()
    return tmp_path


def test_kill_9_mid_send_then_resume_sends_each_reader_at_most_once(
    site: Path, make_smtp_server
) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(data_delay=0.02)  # slow enough to be killed midway
    env = _env(site, server)
    victim = start_send(site, env)
    server.wait_for(30, timeout=60)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(0.5)  # its workers notice the parent is gone and finish what they hold
    server.configure(data_delay=0.0)

    again = subprocess.run(
        [sys.executable, "-m", "newsletter", "send"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resumed issue 1" in again.stdout

    engine = open_database(env["NEWSLETTER_DATABASE_URL"])
    states = deliveries(engine)
    copies = Counter(server.recipients())
    unknown = {e for e, s in states.items() if s == DeliveryStatus.UNKNOWN}
    assert max(copies.values()) == 1  # nobody got two copies
    assert len(unknown) <= 4  # at most the messages in flight (one per connection)
    assert set(many(READERS)) - set(copies) <= unknown  # the missing ones are reported unknown
    assert all(s in (DeliveryStatus.SENT, DeliveryStatus.UNKNOWN) for s in states.values())
    if unknown:
        assert "marked unknown" in again.stdout


def test_two_sends_at_once_never_double_mail(site: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(data_delay=0.005)
    env = _env(site, server)
    first, second = start_send(site, env), start_send(site, env)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes in ([0, 0], [0, 1]), outs
    if codes == [0, 1]:
        loser = outs[[first.returncode, second.returncode].index(1)]
        assert "another send is in progress" in loser[1]
    copies = Counter(server.recipients())
    assert sorted(copies) == many(READERS)
    assert set(copies.values()) == {1}
