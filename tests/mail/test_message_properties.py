"""Property: whatever text a feed or a subscriber supplies, the message keeps its shape.

A feed title, a story title, an author or a subscriber name may hold CR, LF, U+2028,
U+0085, NUL, 10,000 characters, bidi marks or RFC 2047 encoded-words of their own. The
serialised message built by the real render and message code must still carry exactly
the headers we set, each once, one recipient (the subscriber), and parse back cleanly.
"""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.config import Settings, load_settings
from newsletter.issues.feed import FeedStory
from newsletter.issues.render import render_issue
from newsletter.mail.message import MessageTemplate, message_date
from tests.support.helpers import BASE_ENV, feed_story

#: Every header an issue email carries without DKIM, each exactly once.
EXPECTED_HEADERS = {
    "to",
    "date",
    "message-id",
    "list-unsubscribe",
    "from",
    "subject",
    "mime-version",
    "list-id",
    "list-unsubscribe-post",
    "list-archive",
    "precedence",
    "auto-submitted",
    "content-type",
}
RECIPIENTS = ("reader@example.org", "o'neil+news@example.co.uk", "x@xn--bcher-kva.example")

HOSTILE = [
    "\r",
    "\n",
    "\r\n",
    "\r\nBcc: victim@example.net",
    "\nX-Injected: 1",
    "\u2028",
    "\u2029",
    "\x85",
    "\x00",
    "\x0b",
    "\x0c",
    "\t",
    "\u200f",
    "\u202e",
    "\u2066",
    "\ufeff",
    "=?utf-8?q?a=0D=0ABcc:_victim@example.net?=",
    "=?utf-8?b?DQpCY2M6IHZpY3RpbUBleGFtcGxlLm5ldA==?=",
    "=?iso-8859-1?q?caf=E9?=",
    '"',
    "\\",
    "<evil@example.net>",
    ", other@example.net",
    ";",
    ":",
    "@",
    "(",
    ")",
    "שלום",
    "✊🏽",
    " ",
]

hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)), max_size=12).map("".join),
    st.text(max_size=60),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["a", "é", "✊🏽", "\u200f", "\n", " ", "=?"]),
        st.just(10_000),
    ),
)


def _settings(tmp_path: Path) -> Settings:
    return load_settings(environ=BASE_ENV, env_file=tmp_path / "none")


def _story(title: str, author: str) -> FeedStory:
    return feed_story(title, author=author, published_at=datetime(2026, 1, 2, tzinfo=UTC))


def build_message(
    settings: Settings, feed_title: str, title: str, author: str, name: str, to: str
) -> bytes:
    """One subscriber's message through the real render and message code."""
    rendered = render_issue(
        [_story(title, author)],
        settings,
        issue_id=7,
        feed_title=feed_title,
        feed_link="https://endseclusion.org/",
    )
    template = MessageTemplate(
        settings, subject=rendered.subject, html=rendered.html, text=rendered.text, issue_id=7
    )
    return template.personalise(
        to,
        name,
        "TOKEN1234567890abcdefgh",
        message_id=template.new_message_id(),
        date=message_date(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    )


def check_message(data: bytes, to: str) -> None:
    head = data.split(b"\r\n\r\n", 1)[0]
    # every line ends in CRLF: no bare CR or LF anywhere in the header block
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    assert b"\x00" not in head
    names = []
    for line in head.split(b"\r\n"):
        assert line.isascii(), line  # non-ASCII is RFC 2047-encoded
        assert len(line) <= 998, len(line)
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the header above
        name, colon, _ = line.partition(b":")
        assert colon, line
        names.append(name.decode("ascii").lower())
    assert sorted(names) == sorted(EXPECTED_HEADERS), names
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    recipients = msg["To"].addresses  # parsing the header must not raise
    assert [a.addr_spec for a in recipients] == [to]
    for header in ("Subject", "To"):  # decoded, each is one line of text
        value = str(msg[header])
        assert not any(c in value for c in "\r\n\x00\x85\u2028\u2029"), (header, value)
    assert [h.lower() for h in msg] == names
    assert msg.get_content_type() == "multipart/alternative"
    assert {p.get_content_type() for p in msg.iter_parts()} == {"text/plain", "text/html"}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    feed_title=hostile_text,
    title=hostile_text,
    author=hostile_text,
    name=hostile_text,
    to=st.sampled_from(RECIPIENTS),
)
def test_hostile_text_never_changes_the_headers(
    tmp_path: Path, feed_title: str, title: str, author: str, name: str, to: str
) -> None:
    data = build_message(_settings(tmp_path), feed_title, title, author, name, to)
    check_message(data, to)


INJECTION = "=?utf-8?q?a=0D=0ABcc:_victim@example.net?="


def test_an_encoded_word_name_is_not_decoded_into_a_second_recipient(tmp_path: Path) -> None:
    """Issue 11 (11): a name that is itself an encoded-word decoding to CR LF + Bcc."""
    data = build_message(_settings(tmp_path), "AASR", "Title", "Author", INJECTION, RECIPIENTS[0])
    check_message(data, RECIPIENTS[0])
    msg = email.message_from_bytes(data, policy=default)
    assert msg["To"].addresses[0].display_name == INJECTION  # shown as the literal text


def test_an_encoded_word_title_does_not_inject_a_header(tmp_path: Path) -> None:
    """Found by the property above: the policy decoded a title's encoded-word into CR LF, and
    `Subject: a` + `Bcc: victim@example.net` went out as two header lines."""
    data = build_message(_settings(tmp_path), "AASR", INJECTION, "Author", "", RECIPIENTS[0])
    check_message(data, RECIPIENTS[0])
    assert b"\r\nBcc:" not in data.split(b"\r\n\r\n", 1)[0]
    assert str(email.message_from_bytes(data, policy=default)["Subject"]) == INJECTION
