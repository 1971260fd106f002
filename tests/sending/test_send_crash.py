"""`kill -9` in the middle of a send, and two sends at once: nobody gets two copies.

Real processes (`python -m newsletter send`), a real SQLite file (or PostgreSQL), a real
SMTP server. The failure model these prove is in docs/architecture.md ("Failure model"):
a killed send leaves at most CONNECTIONS x BATCH deliveries `sending`, which the next run
marks `unknown`; every other subscriber gets exactly one copy.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.db import open_database
from newsletter.models import DeliveryStatus
from newsletter.sending.policy import IN_FLIGHT_PER_CONNECTION
from tests.support.helpers import (
    BASE_ENV,
    NEWSLETTER_COMMAND,
    SAMPLE_FEED,
    add_subscribers,
    cli_env,
    database_url,
    deliveries,
    many,
    run_process,
    site_database,
    start_send,
)
from tests.support.smtpserver import SMTPServer

READERS = 120
CONNECTIONS = 4
#: The most deliveries one killed send can leave `sending` (then `unknown`).
IN_FLIGHT = CONNECTIONS * IN_FLIGHT_PER_CONNECTION


pytestmark = pytest.mark.usefixtures("db_backend")


def _env(site: Path, server: SMTPServer) -> dict[str, str]:
    return cli_env(
        **BASE_ENV,
        NEWSLETTER_FEED_URL=str(SAMPLE_FEED),
        NEWSLETTER_DATABASE_URL=database_url(site),
        NEWSLETTER_SMTP_URL=server.url,
        NEWSLETTER_SMTP_CONNECTIONS=str(CONNECTIONS),
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    with site_database(tmp_path) as engine:
        add_subscribers(engine, many(READERS))
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

    again = run_process([*NEWSLETTER_COMMAND, "send"], site, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resumed issue 1" in again.stdout

    engine = open_database(env["NEWSLETTER_DATABASE_URL"])
    states = deliveries(engine)
    copies = Counter(server.recipients())
    unknown = {e for e, s in states.items() if s == DeliveryStatus.UNKNOWN}
    assert max(copies.values()) == 1  # nobody got two copies
    assert len(unknown) <= IN_FLIGHT  # at most the batches in flight (AHEAD per connection)
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


def _sending(engine: sa.Engine) -> set[str]:
    """The subscribers whose delivery is `sending` now."""
    return {e for e, s in deliveries(engine).items() if s == DeliveryStatus.SENDING}


def _open_left(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM delivery WHERE status IN ('pending', 'deferred')"
        return conn.execute(sa.text(query)).scalar_one()


def _send_to_the_end(site: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_process([*NEWSLETTER_COMMAND, "send"], site, env, timeout=300)


def kill_at_random_points(tmp_path: Path, make_smtp_server, kills: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Start `newsletter send` and kill -9 it at a random moment, `kills` times (mostly
    mid-send, sometimes in its start-up); then let one run finish. Checks after every
    kill that at most IN_FLIGHT deliveries are left `sending`, and at the end that
    nobody got two copies, that exactly those left `sending` ended `unknown`, and that
    everyone else got their one copy."""
    rng = random.Random(seed)
    readers = many(kills * 60 + 200)
    engine = open_database(database_url(tmp_path))
    add_subscribers(engine, readers)
    server = make_smtp_server(data_delay=0.05)  # at most 80 msg/s over 4 connections
    env = _env(tmp_path, server)
    in_flight: set[str] = set()
    landed = 0
    for _ in range(kills):
        before = len(server.recipients())
        victim = start_send(tmp_path, env)
        if rng.random() < 0.2:  # anywhere in its life, start-up included
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # while it sends
            try:
                server.wait_for(before + 1, timeout=60)
            except TimeoutError:
                victim.kill()
                victim.wait(timeout=30)
                break  # it finished everything before it could be killed
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        landed += 1
        time.sleep(0.2)  # its connection processes die with it (PR_SET_PDEATHSIG)
        left = _sending(engine) - in_flight  # a run killed in its start-up recovers nothing
        assert len(left) <= IN_FLIGHT, f"a killed send left {len(left)} deliveries sending"
        in_flight |= left
        if _open_left(engine) == 0 and not _sending(engine) - in_flight:
            break
    assert landed == kills  # every kill hit a send that still had work
    while _open_left(engine) or _sending(engine):
        done = _send_to_the_end(tmp_path, env)
        assert done.returncode == 0, done.stdout + done.stderr

    states = deliveries(engine)
    copies = Counter(server.recipients())
    unknown = {e for e, s in states.items() if s == DeliveryStatus.UNKNOWN}
    assert max(copies.values()) == 1  # nobody got two copies
    assert unknown == in_flight  # exactly what the kills left in flight
    assert set(readers) - set(copies) <= unknown  # every missing one is reported
    sent = {e for e, s in states.items() if s == DeliveryStatus.SENT}
    assert sent | unknown == set(readers)
    assert all(copies[e] == 1 for e in sent)
    engine.dispose()


def test_kill_9_at_random_points_five_times_leaves_only_the_batches_in_flight(
    tmp_path: Path, make_smtp_server
) -> None:  # type: ignore[no-untyped-def]
    kill_at_random_points(tmp_path, make_smtp_server, kills=5, seed=5)


@pytest.mark.slow
@pytest.mark.soak
def test_kill_9_at_random_points_fifty_times_leaves_only_the_batches_in_flight(
    tmp_path: Path, make_smtp_server
) -> None:  # type: ignore[no-untyped-def]
    kill_at_random_points(tmp_path, make_smtp_server, kills=50, seed=50)
