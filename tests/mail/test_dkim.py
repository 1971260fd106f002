"""DKIM signing: every sent message verified by dkimpy, tampering caught.

dkimpy is the reference verifier: our signer is our own (OpenSSL RSA, shared
parts canonicalised once), so each signature is checked by an independent
implementation, with a resolver function standing in for DNS. The key itself
(keygen, bad key settings) is tested in test_dkim_keys.py; the `key` fixture
is in conftest.py.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from dkim.canonicalization import Relaxed

from newsletter.config import Settings
from newsletter.db import open_database
from newsletter.mail.dkim import MessageSigner, relaxed_body, relaxed_header
from newsletter.mail.dkimkey import DkimKey, GeneratedKey, load_key
from newsletter.mail.message import MessageTemplate, message_date
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.helpers import SAMPLE_FEED, add_subscribers, many, settings_for
from tests.support.smtpserver import SMTPServer


def resolver(made: GeneratedKey) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: the TXT record keygen told us to publish, no DNS involved."""
    record = "".join(made.txt_strings).encode("ascii")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{made.record_name}.".encode() else None

    return dnsfunc


def verifies(data: bytes, made: GeneratedKey) -> bool:
    return bool(dkim.verify(data, dnsfunc=resolver(made)))


def signed_settings(tmp_path: Path, made: GeneratedKey, **env: str) -> Settings:
    return settings_for(
        tmp_path,
        NEWSLETTER_DKIM_PRIVATE_KEY=str(made.path),
        NEWSLETTER_DKIM_SELECTOR=made.selector,
        **env,
    )


def h_tag(data: bytes) -> list[str]:
    header = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(r"^DKIM-Signature:.*?\bh=([^;]+);", header, re.S | re.M)
    assert match, header
    return [name.strip() for name in match.group(1).split(":")]


# ---- canonicalisation against dkimpy's --------------------------------------------


TRICKY = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"a",
    b"a \t b\t\r\n\r\n \r\n",
    b" lead\r\n\ttab\t \r\nend  ",
    b"x=\r\n  y  =\r\n\r\n\r\nz\r\n\r\n",
]


@pytest.mark.parametrize("body", TRICKY)
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_relaxed_header_matches_dkimpy() -> None:
    for name, value in [
        (b"Subject", b"  Hello \t world \r\n\t folded  "),
        (b"LIST-Unsubscribe ", b" <https://x/y>"),
        (b"To", b"=?utf-8?q?Siobh=C3=A1n?= <a@b.c>"),
    ]:
        ((cname, cvalue),) = Relaxed.canonicalize_headers([(name, value)])
        assert relaxed_header(name, value) == cname + b":" + cvalue


def test_incremental_body_hash_equals_the_whole_body_hash(
    key: GeneratedKey, tmp_path: Path
) -> None:
    dkim_key = load_key(signed_settings(tmp_path, key))
    assert dkim_key is not None
    rng = random.Random(6)
    alphabet = [b"a", b"=", b" ", b"\t", b"\r\n", b"\r", b"\n", b"-"]
    for _ in range(300):
        runs = [b"".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(4)]
        signer = MessageSigner(dkim_key, dynamic_names=(), static_headers=b"", runs=runs)
        for filler in (b"https://x/u/T0k", b" sp ", b"a=\r\nb", b""):
            expected = hashlib.sha256(relaxed_body(filler.join(runs))).digest()
            assert signer.body_hash(filler) == expected, (runs, filler)


# ---- signed messages through a real SMTP server ----------------------------------


def test_every_sent_message_verifies_and_signs_the_list_headers(
    tmp_path: Path, smtp_server: SMTPServer, key: GeneratedKey
) -> None:
    settings = signed_settings(tmp_path, key, NEWSLETTER_SMTP_URL=smtp_server.url)
    add_subscribers(
        open_database(settings.database_url),
        [*many(5), "siobhan@example.ie"],
        names={"siobhan@example.ie": "Siobhán Ó Briain"},
    )
    result = run_send(open_database(settings.database_url), settings, SendOptions())
    assert result.error is None and result.issues[0].report.sent == 6
    assert len(smtp_server.messages) == 6
    for received in smtp_server.messages:
        data = received.data
        assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
        assert all(len(line) <= 998 for line in data.split(b"\r\n"))
        assert verifies(data, key), received.rcpt_tos
        names = [n.lower() for n in h_tag(data)]
        for required in ("from", "to", "subject", "date", "message-id", "mime-version"):
            assert names.count(required) >= 1, required
        assert "content-type" in names
        assert names.count("list-unsubscribe-post") == 2  # signed (RFC 8058) and over-signed
        for oversigned in ("list-unsubscribe", "list-id", "from", "subject"):
            assert names.count(oversigned) == 2, oversigned
        sig = received.parsed()["DKIM-Signature"]
        assert f"d={key.domain};" in sig and f"s={key.selector};" in sig


def _header_block(data: bytes) -> tuple[bytes, bytes]:
    head, body = data.split(b"\r\n\r\n", 1)
    return head, body


def test_tampering_after_signing_breaks_verification(
    tmp_path: Path, smtp_server: SMTPServer, key: GeneratedKey
) -> None:
    settings = signed_settings(tmp_path, key, NEWSLETTER_SMTP_URL=smtp_server.url)
    add_subscribers(open_database(settings.database_url), ["reader@example.org"])
    assert run_send(open_database(settings.database_url), settings, SendOptions()).error is None
    data = smtp_server.messages[0].data
    assert verifies(data, key)
    head, body = _header_block(data)
    url = re.search(rb"List-Unsubscribe: <([^>]+)>", head)
    assert url
    altered = data.replace(
        b"List-Unsubscribe: <" + url.group(1), b"List-Unsubscribe: <https://evil.example/u"
    )
    assert altered != data and not verifies(altered, key)
    extra = b"List-Unsubscribe: <https://evil.example/u>"
    appended = head + b"\r\n" + extra + b"\r\n\r\n" + body
    assert not verifies(appended, key)
    prepended = extra + b"\r\n" + data
    assert not verifies(prepended, key)
    second_post = head + b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n" + body
    assert not verifies(second_post, key)
    assert not verifies(data.replace(b"PO Box 1234", b"PO Box 9999"), key)
    # a relay re-folding headers or adding trailing blank lines does not break relaxed/relaxed
    assert verifies(data + b"\r\n\r\n", key)


def test_non_ascii_subject_and_name_verify(
    tmp_path: Path, smtp_server: SMTPServer, key: GeneratedKey
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(
        """<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>
        <title>AASR</title><link>https://endseclusion.org</link>
        <item><title>Siobhán’s “win” — ✊ in Zürich</title>
        <link>https://endseclusion.org/a/</link><guid>a1</guid>
        <description>Ünïcödé body   with  spaces\t and tabs</description></item></channel></rss>""",
        encoding="utf-8",
    )
    settings = signed_settings(tmp_path, key, NEWSLETTER_SMTP_URL=smtp_server.url)
    add_subscribers(
        open_database(settings.database_url),
        ["zoe@example.org"],
        names={"zoe@example.org": "Zoë Ðaniel-Øster “Z”"},
    )
    assert run_send(open_database(settings.database_url), settings, SendOptions()).error is None
    received = smtp_server.messages[0]
    assert b"=?utf-8?" in received.data.split(b"\r\n\r\n", 1)[0].lower()
    assert received.parsed()["Subject"].startswith("Siobhán’s “win”")
    assert verifies(received.data, key)


def test_key_is_loaded_once_per_issue(
    tmp_path: Path, key: GeneratedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy.pem"
    shutil.copy(key.path, copy)
    settings = settings_for(
        tmp_path, NEWSLETTER_DKIM_PRIVATE_KEY=str(copy), NEWSLETTER_DKIM_SELECTOR=key.selector
    )
    template = MessageTemplate(
        settings, subject="Hi", html="<p>%%UNSUB%%</p>", text="x", issue_id=1
    )
    copy.unlink()  # personalise must not need the file any more
    loads: list[object] = []
    monkeypatch.setattr(serialization, "load_pem_private_key", lambda *a, **k: loads.append(a))
    for n in range(3):
        data = template.personalise(
            f"r{n}@example.org", None, f"tok{n}", message_id=f"<{n}@x>", date=message_date()
        )
        assert verifies(data, key)
    assert loads == []


def test_the_sample_issue_uses_the_incremental_hash(tmp_path: Path, key: GeneratedKey) -> None:
    """The fast path is what keeps signing under the bare smtplib loop; keep it taken."""
    from newsletter.issues.feed import parse_feed
    from newsletter.issues.render import render_issue

    settings = signed_settings(tmp_path, key)
    feed = parse_feed(SAMPLE_FEED.read_bytes(), base_url="https://endseclusion.org/feed/")
    rendered = render_issue(
        feed.stories, settings, issue_id=1, feed_title=feed.title, feed_link=feed.link
    )
    template = MessageTemplate(
        settings, subject=rendered.subject, html=rendered.html, text=rendered.text, issue_id=1
    )
    signer = template._signer
    assert signer is not None and signer.incremental and len(signer.runs) >= 3
    data = template.personalise(
        "a@example.org", "Siobhán", "T" * 22, message_id="<1@x>", date=message_date()
    )
    assert verifies(data, key)


def test_key_survives_pickling(tmp_path: Path, key: GeneratedKey) -> None:
    dkim_key = load_key(signed_settings(tmp_path, key))
    again = pickle.loads(pickle.dumps(dkim_key))  # noqa: S301 - our own object, pickled here
    assert (
        isinstance(again, DkimKey) and again.selector == key.selector and again.domain == key.domain
    )
    assert again.private_key.private_numbers() == dkim_key.private_key.private_numbers()  # type: ignore[union-attr]


def test_without_dkim_settings_nothing_is_signed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert load_key(settings) is None
    template = MessageTemplate(settings, subject="Hi", html="<p>x</p>", text="x", issue_id=1)
    data = template.personalise("a@example.org", None, "t", message_id="<1@x>", date="d")
    assert b"DKIM-Signature" not in data
