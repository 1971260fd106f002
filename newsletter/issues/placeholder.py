"""The unsubscribe placeholder of an issue: made, recorded with the issue, found, filled.

The rendered bodies carry a placeholder where each reader's unsubscribe URL goes;
message.py replaces it per reader at the byte level. It is random per issue
(`%%UNSUBSCRIBE_URL_<32 hex>%%`), made after the feed's text is fixed, so a story
cannot contain it: a fixed string in a story would have the reader's personal link
filled into it (an image URL on the attacker's server collects every reader's
token). It is stored with the frozen issue as a comment at the very start of its
HTML, a place feed text can never reach; `split_placeholder` strips it. An issue
frozen before (no such comment) uses the old fixed placeholder, UNSUBSCRIBE_URL,
and sends as it always did.
"""

from __future__ import annotations

import re
import secrets

#: The fixed placeholder of issues frozen before per-issue placeholders (still sent so).
UNSUBSCRIBE_URL = "%%UNSUBSCRIBE_URL%%"
_MARK = re.compile(r"\A<!--newsletter-placeholder:([0-9a-f]{32})-->\n")


def new_placeholder() -> tuple[str, str]:
    """(key, placeholder) for one issue: unguessable, so no feed text can hold it."""
    key = secrets.token_hex(16)
    return key, f"%%UNSUBSCRIBE_URL_{key}%%"


def mark_placeholder(key: str, html: str) -> str:
    """`html` with the comment that records its placeholder, where `split_placeholder` reads it."""
    return f"<!--newsletter-placeholder:{key}-->\n{html}"


def split_placeholder(html: str) -> tuple[str, str]:
    """(the issue's placeholder, its HTML without the comment that records it).

    Only the very start of the HTML is read: an issue's own renderer wrote it,
    feed text cannot be there. No comment: an issue frozen before, UNSUBSCRIBE_URL.
    """
    match = _MARK.match(html)
    if match is None:
        return UNSUBSCRIBE_URL, html
    return f"%%UNSUBSCRIBE_URL_{match[1]}%%", html[match.end() :]


def fill_unsubscribe(body: str, url: str, placeholder: str | None = None) -> str:
    """A body with `url` where its template put the unsubscribe link (previews, tests)."""
    if placeholder is None:
        placeholder, body = split_placeholder(body)
    return body.replace(placeholder, url)
