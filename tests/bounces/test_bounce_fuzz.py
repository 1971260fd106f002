"""Hostile input to `bounces import` (issue 11): oversized messages, fuzzing, a hostile mailbox.

- A message over MAX_MESSAGE_BYTES is skipped unread, with a report line, in an
  mbox and in a Maildir; the real CLI runs in its own process so its peak
  memory can be read: a 40 MB message used 560 MB before.
- hypothesis: any bytes given to the DSN/ARF parser give a ParsedReport or an
  UnreadableReport (a NewsletterError), never another exception.
- 1,000 hostile messages (malformed MIME, 5 MB attachments, deep nesting,
  wrong charsets, forged and genuine reports) in one real mbox file: the run
  finishes, memory stays bounded, every message is counted somewhere, and only
  the genuine reports change anybody.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.bounces.dsn import MAX_FINDINGS, ParsedReport, UnreadableReport, parse_report
from newsletter.bounces.record import MAX_MESSAGE_BYTES
from newsletter.errors import NewsletterError
from newsletter.mail.verp import envelope_sender
from tests.support.bouncesite import (
    FIXTURES,
    MB,
    REPORTS,
    Site,
    big_bounce,
    cli,
    report_numbers,
    sent_site,
    write_maildir,
    write_mbox,
)

#: runs the real CLI, then prints its own peak resident memory (KiB) to stderr. VmHWM, not
#: getrusage: Linux carries ru_maxrss over a (v)fork + exec, so the child would report pytest's.
_PEAK = """\
import re, resource, sys
from pathlib import Path
from newsletter.cli import main
try:
    main(sys.argv[1:], prog_name="newsletter")
finally:
    status = Path("/proc/self/status")
    hwm = re.search(r"VmHWM:\\s+(\\d+)", status.read_text()) if status.exists() else None
    peak = int(hwm[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("peak-rss-kb", peak, file=sys.stderr)
"""


def run_measured(site: Site, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`newsletter ARGS` in a process of its own: (the result, its peak memory in MB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *args],
        env={**env, **site.env},
        cwd=site.path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    peak = re.search(r"peak-rss-kb (\d+)", done.stderr)
    assert peak is not None, done.stderr
    return done, int(peak[1]) // 1024


def skipped_line(output: str) -> dict[str, int]:
    """'not bounce reports: 1, unreadable: 2, too large: 3 (...)' -> the three numbers."""
    found = re.search(r"not bounce reports: (\d+), unreadable: (\d+), too large: (\d+)", output)
    if found is None:
        return {"not reports": 0, "unreadable": 0, "too large": 0}
    names = ("not reports", "unreadable", "too large")
    return dict(zip(names, map(int, found.groups()), strict=True))


# ---- 11.14: a size cap per message ------------------------------------------------


def test_a_40_mb_message_in_an_mbox_is_skipped_unread(site: Site) -> None:
    path = write_mbox(
        site.path / "bounces.mbox",
        [site.fill("postfix-user-unknown.eml"), site.fill("postfix-mailbox-full.eml")],
    )
    with path.open("ab") as handle:  # appended by hand: the test keeps no 40 MB copy
        handle.write(b"From MAILER-DAEMON Tue Dec  2 10:00:00 2025\n")
        handle.write(big_bounce(40 * MB))
        handle.write(b"\n")
    assert path.stat().st_size > 40 * MB

    done, peak_mb = run_measured(site, "bounces", "import", str(path))

    assert done.returncode == 0, done.stderr
    assert report_numbers(done.stdout)["processed"] == 2
    assert skipped_line(done.stdout)["too large"] == 1
    assert re.search(r"bounces\.mbox#2: 41,9\d\d,\d\d\d bytes or more, over the", done.stdout)
    assert site.status("gone.postfix@example.org") == "bounced"
    assert site.status("victim@example.org") == "active"
    # loosely: the whole process, far below the 560 MB of reading it whole (or 2 x 40 MB)
    assert peak_mb < 200, peak_mb


def test_an_oversized_message_in_a_maildir_is_skipped_and_the_rest_read(site: Site) -> None:
    path = write_maildir(
        site.path / "md",
        [site.fill("postfix-user-unknown.eml"), big_bounce(MAX_MESSAGE_BYTES + MB)],
    )

    result = cli(site, "bounces", "import", str(path))

    assert result.exit_code == 0, result.output
    assert report_numbers(result.output)["processed"] == 1
    assert skipped_line(result.output)["too large"] == 1
    assert "over the 10,485,760-byte limit for a report: not read" in result.output
    assert site.status("gone.postfix@example.org") == "bounced"


def test_a_message_just_under_the_cap_is_read(site: Site) -> None:
    raw = big_bounce(MAX_MESSAGE_BYTES - 64 * 1024, name="under")
    assert len(raw) <= MAX_MESSAGE_BYTES
    result = cli(site, "bounces", "import", str(write_mbox(site.path / "u.mbox", [raw])))
    assert result.exit_code == 0, result.output
    assert skipped_line(result.output)["too large"] == 0
    assert report_numbers(result.output)["processed"] == 1  # a bounce naming nobody of ours


# ---- hypothesis: the parser never lets an exception escape --------------------


def _check(raw: bytes) -> None:
    try:
        report = parse_report(raw)
    except UnreadableReport as exc:
        assert isinstance(exc, NewsletterError) and exc.message
        return
    assert isinstance(report, ParsedReport)
    assert len(report.findings) <= MAX_FINDINGS
    assert len(report.report_id) <= 480 or report.report_id.startswith("sha256:")
    assert all(len(f.diagnostic or "") <= 1000 for f in report.findings)


_SEEDS = [(FIXTURES / name).read_bytes() for name in REPORTS]
_LINES = [
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b",
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=b",
    b"Content-Type: message/delivery-status",
    b"Content-Type: message/feedback-report",
    b"Content-Type: message/rfc822",
    b"Content-Type: text/rfc822-headers",
    b"Content-Type: multipart/mixed; boundary=b",
    b"Content-Type: text/plain; charset=x-unknown",
    b"Content-Type: text/plain; charset=utf-16",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Disposition: attachment; filename*=x''%ff",
    b"--b",
    b"--b--",
    b"",
    b"From: MAILER-DAEMON@example.org",
    b"Subject: =?x-bogus?q?failure_notice?=",
    b"Subject: =?utf-8?b?!!!?=",
    b"Final-Recipient: rfc822; a@example.org",
    b"Final-Recipient: ;",
    b"Original-Recipient: rfc822;<>",
    b"Action: failed",
    b"Status: 5.1.1",
    b"Status: 9.9.99999999999999999999",
    b"Diagnostic-Code: smtp; 550 5.1.1 user unknown",
    b"Feedback-Type: abuse",
    b"Original-Rcpt-To: <a@example.org",
    b"Original-Mail-From: <bounces+aaaaaaaaaaaaaaaa1@endseclusion.org>",
    b"Message-ID: <x@y>",
    b"Date: Mon, 99 Foo 99999 99:99:99 +9999",
    b"Return-Path: <>",
    b"<a@example.org>:",
    b"To: " + b",".join(b"a%d@b.c" % n for n in range(50)),
    b"\xff\xfe\x00\r",
    b"=?utf-8?q?=0D=0A?=",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_any_bytes_parse_or_fail_cleanly(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_LINES) | st.binary(max_size=40), max_size=60))
def test_report_shaped_lines_parse_or_fail_cleanly(lines: list[bytes]) -> None:
    _check(b"\n".join(lines))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 40), st.binary(max_size=30))),
)
def test_mangled_real_reports_parse_or_fail_cleanly(
    seed: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    raw = bytearray(seed)
    for offset, cut, insert in edits:
        at = offset % (len(raw) + 1)
        raw[at : at + cut] = insert
    _check(bytes(raw))


# ---- 1,000 hostile messages through the real CLI -----------------------------------


def _nested(depth: int, rng: random.Random) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%d"\n\n--n%d\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"--n%d--\n" % i for i in reversed(range(depth)))
    body = b"Content-Type: text/plain\n\n550 5.1.1 user unknown\n"
    if rng.random() < 0.5:
        closing = closing[: len(closing) // 2]  # never closed
    return b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n" + opening + body + closing


def _hostile(n: int, rng: random.Random) -> bytes:
    """One of a dozen kinds of broken or hostile message."""
    kind = n % 12
    who = f"reader{n}@example.org"
    if kind == 0:
        return _nested(rng.randint(1, 80), rng)
    if kind == 1:  # a DSN with a broken boundary and junk fields
        return (
            f"From: MAILER-DAEMON@x.example\nMessage-ID: <h{n}@x>\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="q\n\n'
            f"--q\nContent-Type: message/delivery-status\n\nFinal-Recipient: {who}\n"
            "Status: 5.1.1.1.1\nAction: \x00\n"
        ).encode()
    if kind == 2:  # wrong charsets everywhere
        charset = rng.choice(["x-bogus", "utf-16", "utf-7", "iso-2022-jp", "", "utf-8"])
        return (
            f"From: =?{charset}?b?////?= <mailer-daemon@x.example>\nSubject: failure notice\n"
            f"Message-ID: <c{n}@x>\nContent-Type: text/plain; charset={charset}\n\n"
        ).encode() + bytes(rng.randrange(256) for _ in range(300))
    if kind == 3:  # base64 and quoted-printable that do not decode
        return (
            "From: postmaster@x.example\nSubject: Undeliverable\nMIME-Version: 1.0\n"
            f"Message-ID: <e{n}@x>\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="z"\n\n'
            "--z\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n@@@===\n"
            "--z\nContent-Type: text/rfc822-headers\n"
            "Content-Transfer-Encoding: quoted-printable\n\n"
            "Message-ID: =ZZ=\n--z--\n"
        ).encode()
    if kind == 4:  # an ARF whose fields are garbage
        return (
            f"From: fbl@x.example\nMessage-ID: <a{n}@x>\n"
            "Content-Type: multipart/report; report-type=feedback-report; boundary=f\n\n"
            "--f\nContent-Type: message/feedback-report\n\n"
            f"Feedback-Type: {'abuse' if rng.random() < 0.5 else chr(0)}\n"
            f"Original-Rcpt-To: {who}\nOriginal-Mail-From: <<<>>>\n\n--f--\n"
        ).encode()
    if kind == 5:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))
    if kind == 6:  # nested message/rfc822 parts
        depth = rng.randint(1, 50)
        return (
            b"From: MAILER-DAEMON@x.example\nSubject: failure\n"
            + (b"Content-Type: message/rfc822\n\n" * depth)
            + b"Message-ID: <deep@x>\n\n550 no such user\n"
        )
    if kind == 7:  # a forged report naming a subscriber: recorded, suppresses nobody
        return (
            f"From: MAILER-DAEMON@x.example\nSubject: failure notice\nMessage-ID: <f{n}@x>\n\n"
            f"<{who}>:\n550 5.1.1 user unknown\n"
        ).encode()
    if kind == 8:  # headers only, lone CRs and NULs, huge header line
        return b"Subject: " + b"\r" * 500 + b"\x00" * 10 + b"x" * rng.randint(0, 100_000) + b"\n"
    if kind == 9:  # an out-of-office
        return f"From: {who}\nSubject: Out of office\nMessage-ID: <o{n}@x>\n\nAway.\n".encode()
    if kind == 10:  # a person writing
        return f"From: {who}\nSubject: hello\nMessage-ID: <p{n}@x>\n\nHi!\n".encode()
    # many encoded-words and many addresses
    return (
        b"From: MAILER-DAEMON@x.example\nTo: "
        + b", ".join(b"=?utf-8?q?a?= <a%d@b.example>" % i for i in range(3000))
        + b"\nSubject: "
        + b"=?utf-8?q?=FF?= " * 3000
        + b"\n\n550 5.1.1\n"
    )


def test_a_mailbox_of_1000_hostile_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    readers = [f"reader{n}@example.org" for n in range(40)]
    site = sent_site(tmp_path, readers)
    rng = random.Random(11)
    genuine = readers[:10]  # a real hard bounce each, with the delivery's VERP token
    messages = [
        (
            f"Return-Path: <>\nDelivered-To: {envelope_sender(site.settings, site.delivery(r)[0])}"
            f"\nFrom: MAILER-DAEMON@mx.example\nSubject: failure notice\nMessage-ID: <g{r}>\n\n"
            f"<{r}>:\n550 5.1.1 user unknown\n"
        ).encode()
        for r in genuine
    ]
    messages += [big_bounce(5 * MB, name=f"att{n}") for n in range(3)]
    messages += [_nested(3000, rng)]  # deeper than Python's recursion limit
    messages += [_hostile(n, rng) for n in range(1000 - len(messages))]
    rng.shuffle(messages)
    path = write_mbox(tmp_path / "hostile.mbox", messages)
    del messages

    done, peak_mb = run_measured(site, "bounces", "import", str(path))

    assert done.returncode == 0, done.stderr[-2000:]
    numbers = report_numbers(done.stdout)
    skipped = skipped_line(done.stdout)
    seen = re.search(r"\((\d+) already seen", done.stdout)
    counted = (
        numbers["processed"]
        + (int(seen[1]) if seen else 0)
        + skipped["not reports"]
        + skipped["unreadable"]
        + skipped["too large"]
    )
    assert counted == 1000, done.stdout
    assert skipped["unreadable"] >= 1  # at least the 3,000-deep nesting
    assert numbers["suppressed now"] == len(genuine), done.stdout
    for reader in readers:
        assert site.status(reader) == ("bounced" if reader in genuine else "active"), reader
    assert peak_mb < 300, peak_mb  # one message at a time: no 1,000-message or 15 MB pile-up
