"""The send engine in memory: issues, resumes, locks and unsubscribes mid-send."""

from __future__ import annotations

import email
import shutil
from dataclasses import replace
from email.policy import default
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.errors import SendInProgress
from newsletter.mail.transport import MemoryTransport, Reply
from newsletter.models import DeliveryStatus, SubscriberStatus
from newsletter.sending.lease import Holder
from newsletter.sending.lock import SendLockHolder
from newsletter.sending.options import SendOptions
from newsletter.sending.queue import ERASED, recover
from newsletter.sending.run import run_send
from tests.support.helpers import (
    NEXT_FEED,
    add_subscribers,
    database,
    deliveries,
    many,
    settings_for,
    table_dump,
    with_subscribers,
)

pytestmark = pytest.mark.usefixtures("db_backend")
SQLITE_ONLY = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


def _told(result) -> str:  # type: ignore[no-untyped-def]
    """Everything the run tells the user: its notes and why no new issue was made."""
    return " ".join([*result.notes, getattr(result, "nothing_new", None) or ""])


def _send(engine, settings, transport, **options):  # type: ignore[no-untyped-def]
    return run_send(engine, settings, SendOptions(**options), factory=lambda: transport)


def test_first_send_then_nothing_new_then_only_the_new_stories(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(7))
    transport = MemoryTransport()

    first = _send(engine, settings, transport)
    assert first.error is None
    assert len(transport.sent) == 7
    assert sorted(m.rcpt for m in transport.sent) == many(7)
    assert first.issues[0].report.sent == 7 and first.issues[0].finished

    again = _send(engine, settings, transport)
    assert "no new stories" in _told(again)
    assert len(transport.sent) == 7

    shutil.copy(NEXT_FEED, tmp_path / "feed.xml")
    later = _send(engine, settings, transport)
    assert later.issues and later.error is None
    new_titles = {s.title for s in later.stories}
    first_titles = {s.title for s in first.stories}
    assert new_titles and not new_titles & first_titles
    assert len(transport.sent) == 14


def test_max_stories_caps_the_first_issue_and_records_the_rest(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(1))
    result = _send(engine, settings, MemoryTransport(), max_stories=3)
    assert len(result.stories) == 3
    assert any("left out" in note for note in result.notes)
    # The older ones count as sent: the next run has nothing new.
    assert "no new stories" in _told(_send(engine, settings, MemoryTransport()))


def test_min_stories_holds_the_issue_back(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(2))
    transport = MemoryTransport()
    result = _send(engine, settings, transport, min_stories=50)
    assert not result.issues and len(transport.sent) == 0
    assert "--min-stories" in _told(result)
    # The stories stay new, so a later run without the threshold sends them.
    assert _send(engine, settings, transport).issues
    assert len(transport.sent) == 2


def test_baseline_records_without_sending(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(3))
    transport = MemoryTransport()
    result = _send(engine, settings, transport, baseline=True)
    assert "Recorded 10 stories" in result.notes[0]
    assert not transport.sent
    assert "no new stories" in _told(_send(engine, settings, transport))


def test_dry_run_writes_nothing_and_sends_nothing(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(3))
    before = table_dump(engine)
    transport = MemoryTransport()
    result = _send(engine, settings, transport, dry_run=True)
    assert len(result.stories) == 10 and result.recipients == 3
    assert not transport.sent
    assert table_dump(engine) == before


def test_no_subscribers_keeps_the_stories_for_later(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    result = _send(engine, settings, MemoryTransport())
    assert "no active subscribers" in _told(result)
    add_subscribers(engine, many(1))
    assert _send(engine, settings, MemoryTransport()).issues


def test_only_active_subscribers_are_mailed(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, ["on@example.org"])
    for status in (
        SubscriberStatus.UNSUBSCRIBED,
        SubscriberStatus.BOUNCED,
        SubscriberStatus.COMPLAINED,
        SubscriberStatus.PENDING,
    ):
        add_subscribers(engine, [f"{status}@example.org"], status=status)
    transport = MemoryTransport()
    _send(engine, settings, transport)
    assert [m.rcpt for m in transport.sent] == ["on@example.org"]


def test_unsubscribe_during_the_send_takes_effect(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(5))
    leaver = many(5)[4]

    def responder(mail_from: str, rcpt: str, data: bytes) -> Reply:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE subscriber SET status='unsubscribed' WHERE email=:e"), {"e": leaver}
            )
        return Reply(250, "OK")

    transport = MemoryTransport(responder=responder)
    result = _send(engine, settings, transport)
    assert leaver not in [m.rcpt for m in transport.sent]
    assert deliveries(engine)[leaver] == DeliveryStatus.SKIPPED
    assert result.issues[0].report.skipped == 1 and result.issues[0].finished


def test_resume_after_interruption_sends_each_subscriber_once(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(20))
    calls = {"n": 0}

    def flaky(mail_from: str, rcpt: str, data: bytes) -> Reply:
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # the operator pressed Ctrl-C mid-send
        return Reply(250, "OK")

    first = MemoryTransport(responder=flaky)
    result = _send(engine, settings, first)
    assert result.error is not None
    delivered = {m.rcpt for m in first.sent}
    second = MemoryTransport()
    again = _send(engine, settings, second)
    # The message that was in flight when interrupted is "unknown", never resent.
    in_flight = [e for e, s in deliveries(engine).items() if s == DeliveryStatus.UNKNOWN]
    assert again.error is None and again.issues[0].resumed
    resent = [m.rcpt for m in second.sent]
    assert not set(resent) & delivered
    assert len(resent) == len(set(resent))
    assert delivered | set(resent) | set(in_flight) == set(many(20))
    assert len(in_flight) <= 1


def test_a_delivery_whose_subscriber_row_was_deleted_by_hand_is_skipped_and_the_issue_ends(
    tmp_path: Path,
) -> None:
    """Deliveries have no foreign key (migration 0007): a row deleted outside
    `subscribers forget` leaves its delivery, which the claims would never pick."""
    settings, engine = with_subscribers(tmp_path, many(6))
    calls = {"n": 0}

    def interrupted(mail_from: str, rcpt: str, data: bytes) -> Reply:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return Reply(250, "OK")

    assert _send(engine, settings, MemoryTransport(responder=interrupted)).error is not None
    gone = many(6)[5]
    with engine.begin() as conn:
        sid = conn.execute(
            sa.text("SELECT id FROM subscriber WHERE email=:e"), {"e": gone}
        ).scalar()
        conn.execute(sa.text("DELETE FROM subscriber WHERE id=:i"), {"i": sid})
    transport = MemoryTransport()
    again = _send(engine, settings, transport)
    assert again.error is None and again.issues[0].finished
    assert "1 deliveries were skipped: their subscriber is no longer stored." in _told(again)
    assert gone not in [m.rcpt for m in transport.sent]
    with engine.connect() as conn:
        status, why = conn.execute(
            sa.text("SELECT status, last_error FROM delivery WHERE subscriber_id=:i"), {"i": sid}
        ).one()
    assert (status, why) == (DeliveryStatus.SKIPPED, ERASED)


def test_crash_leftovers_become_unknown_not_pending(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(3))
    _send(engine, settings, MemoryTransport())
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE delivery SET status='sending' WHERE id=1"))
    assert recover(engine) == 1
    assert sorted(deliveries(engine).values()).count(DeliveryStatus.UNKNOWN) == 1


def test_retry_unknown_resends_on_purpose(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(3))
    _send(engine, settings, MemoryTransport())
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE delivery SET status='unknown' WHERE id=2"))
    transport = MemoryTransport()
    assert not _send(engine, settings, transport).issues  # unknown is never resent by itself
    result = _send(engine, settings, transport, retry_unknown=True)
    assert len(transport.sent) == 1 and result.issues[0].finished


@SQLITE_ONLY  # PostgreSQL: a second send helps instead (test_postgres_send.py)
def test_a_second_send_is_told_another_is_in_progress(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(2))
    with SendLockHolder(engine), pytest.raises(SendInProgress, match="another send"):
        _send(engine, settings, MemoryTransport())
    # Released: the next run works.
    assert _send(engine, settings, MemoryTransport()).issues


@SQLITE_ONLY  # PostgreSQL: a second send helps instead (test_postgres_send.py)
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(2))
    dead = replace(Holder.this_process(), pid=2**22 + 12345)  # no such process
    holder = SendLockHolder(engine, holder=dead)
    holder.acquire()
    holder._stop.set()  # the "crashed" run stops beating, without releasing
    result = _send(engine, settings, MemoryTransport())
    assert any("Took over" in note for note in result.notes)
    assert result.issues[0].report.sent == 2


@SQLITE_ONLY
def test_a_lock_of_a_same_named_host_is_not_taken_over_by_its_pid(tmp_path: Path) -> None:
    """Same host name, a pid that is dead here, another machine's pid space: its lease rules."""
    settings, engine = with_subscribers(tmp_path, many(2))
    holder = SendLockHolder(
        engine,
        holder=replace(
            Holder.this_process(),
            pid=2**22 + 12345,  # no such process here; alive on the other machine
            pid_space="another-machine-boot:4026531836",
        ),
    )
    holder.acquire()
    holder._stop.set()
    with pytest.raises(SendInProgress, match="another send"):
        _send(engine, settings, MemoryTransport())


def test_rate_limit_spaces_messages(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(10), NEWSLETTER_SEND_RATE="50")
    transport = MemoryTransport()
    result = _send(engine, settings, transport)
    assert result.issues[0].report.sent == 10


def test_a_huge_issue_keeps_older_stories_for_the_next_one(tmp_path: Path) -> None:
    """Gmail clips HTML past ~102 KB, hiding the unsubscribe link: stay under it."""
    items = "".join(
        f"""<item><title>Story {n}: {"a long title about restraint and seclusion " * 3}</title>
        <link>https://endseclusion.org/{n}/</link><guid>s{n}</guid>
        <pubDate>Mon, {1 + n % 28:02d} Jan 2024 10:{n % 60:02d}:00 +0000</pubDate>
        <description>{
            "<p>"
            + "Words about safer schools for every child. " * 25
            + "</p>"
            + "<p>"
            + "More words. " * 40
            + "</p>"
        }</description></item>"""
        for n in range(60)
    )
    (tmp_path / "feed.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>AASR</title>'
        f"<link>https://endseclusion.org</link>{items}</channel></rss>",
        encoding="utf-8",
    )
    settings, engine = with_subscribers(tmp_path, many(1))
    transport = MemoryTransport()
    first = _send(engine, settings, transport, max_stories=60)
    assert any("kept for the next issue" in note for note in first.notes)
    kept = 60 - len(first.stories)
    assert 0 < kept < 60
    html = email.message_from_bytes(transport.sent[0].data, policy=default).get_body(("html",))
    assert len(html.get_content().encode()) <= 95_000
    later: list[str] = []
    for _ in range(10):  # the kept stories go out in the next issues, none twice
        result = _send(engine, settings, transport, max_stories=60)
        if not result.issues:
            break
        later += [s.title for s in result.stories]
    assert len(later) == len(set(later)) == kept
    assert {s.title for s in first.stories}.isdisjoint(later)
