"""The import's fast paths give exactly what the general code gives (issue 14).

The importer reads most files with a row reader specialised to their columns,
cleans most names without the decoding/normalising pipeline, and draws tokens in
bulk; each is checked here against the code it stands in for, on generated input.
"""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from newsletter.mail import addresses
from newsletter.mail.addresses import clean_name
from newsletter.models import UTCDateTime
from newsletter.subscribers.csvformats import map_columns
from newsletter.subscribers.csvrows import read_contact, row_reader
from newsletter.subscribers.importstaging import _time_format, new_tokens

HEADERS = (
    ["Email Address", "First Name", "Last Name", "OPTIN_TIME", "CONFIRM_TIME", "CONFIRM_IP"],
    ["email", "name", "created_at"],
    ["E-mail", "Vorname", "Nachname"],
    ["Email Address", "First Name", "UNSUB_TIME", "CLEAN_TIME"],  # presence columns
    ["email", "name", "status", "subscribed_to_emails"],  # the general reader
    ["email"],
)
CELLS = st.sampled_from(
    [
        "", " ", "ana@example.org", " Ana@Example.ORG ", "'=1+2", "'ana@example.org", "=SUM(A1)",
        "Ana", "  Zoë  ", "2023-01-14 10:22:01", "2023-01-14T10:22:01+02:00", "2023/01/14",
        "Jan 14, 2023", "not a date", "10.0.0.1", "x" * 80, "active", "true", "no",
    ]
)  # fmt: skip


def _as_tuple(cells: list[str], header: list[str]) -> tuple[object, ...]:
    cols = map_columns(header)
    assert cols is not None
    c = read_contact(cells, cols, header)
    return (
        c.email, c.name, c.status, c.opt_in_at, c.confirmed_at, c.unsubscribed_at,
        c.consent_ip, c.problem,
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(header=st.sampled_from(HEADERS), data=st.data())
def test_row_reader_reads_as_read_contact(header: list[str], data: st.DataObject) -> None:
    cells = data.draw(st.lists(CELLS, min_size=0, max_size=len(header) + 1))
    cols = map_columns(header)
    assert cols is not None
    assert row_reader(cols, header)(cells) == _as_tuple(cells, header)


def _slow_clean_name(raw: str) -> str | None:
    """clean_name without its fast path: the general pipeline, step by step."""
    text = addresses._decode_words(raw[: addresses._RAW_LIMIT])
    text = addresses.unicodedata.normalize("NFC", text)
    text = addresses._SPACES.sub(" ", addresses._CONTROL.sub(" ", text)).strip()
    return text[: addresses.NAME_MAX_LENGTH].rstrip() or None


@settings(max_examples=500, deadline=None)
@given(
    raw=st.text(alphabet=string.printable + "\x00\x7f\u00e9\u2028=?", max_size=220)
    | st.sampled_from(["=?utf-8?b?QW5h?=", "Ana  Silva", " Ana ", "A" * 201, "Ana\tSilva"])
)
def test_clean_name_fast_path_agrees_with_the_general_one(raw: str) -> None:
    assert clean_name(raw) == (_slow_clean_name(raw) if raw else None)


def test_bulk_tokens_are_like_new_token() -> None:
    tokens = new_tokens(5000)
    assert len(tokens) == len(set(tokens)) == 5000
    for token in tokens[:50] + tokens[-50:]:
        assert len(token) == 22
        assert len(base64.urlsafe_b64decode(token + "==")) == 16
        assert set(token) <= set(string.ascii_letters + string.digits + "-_")
        # the 22nd character holds the last 2 bits only, as in secrets.token_urlsafe(16)
        assert token[-1] in "AQgw"


@given(
    when=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))]))
)
def test_staged_times_are_what_sqlalchemy_stores(when: datetime) -> None:
    """On SQLite the staged text goes into `subscriber` as it is: it must match exactly."""
    dialect = sqlite.dialect()
    bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    assert _time_format(dialect)(when) == bind(when)
