"""Render an issue once: subject, HTML (CSS inlined) and text (no DB writes).

CONTRACT (used by newsletter.issues.create, newsletter.mail.message, the send's
preview, the confirmation and welcome emails and the web archive):

    render_issue(stories, settings, *, issue_id, feed_title, feed_link, max_blocks=None)
        -> RenderedIssue
    render_bodies(settings, stem, context, *, placeholder=None) -> (html, text)
        # any email's two bodies: the issue's, the welcome's, the confirmation's
    story_blocks(story, mode) -> int   # how many places a story's body may be cut at
    render_subject(stories, settings, *, feed_title="", feed_link=None, issue_id=None) -> str
    normalise_subject(text, limit=200) -> str

Rendering happens once per issue, never per subscriber: premailer costs about
7 ms for a 10-story issue (about 50 ms for the first document in a process,
while cssutils warms up), and the per-subscriber unsubscribe link is a
byte-level replacement of a placeholder in the finished bodies. premailer (with
cssutils and requests: about 70 ms and 10 MB to import) is imported on the first
inlining, so a send that finds nothing new never loads it.

The placeholder (placeholder.py) is made per issue after the feed's text is fixed.

What each story shows is `settings.story_content` (NEWSLETTER_STORY_CONTENT):
"summary" (the feed's excerpt, cut if long), "full" (the whole post, fitted to
the column by newsletter.issues.layout) or "title" (title, date, author, link).
A one-run override is `dataclasses.replace(settings, story_content=...)`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from typing import Any, Protocol
from urllib.parse import urlsplit

from markupsafe import Markup

from newsletter.config import Settings
from newsletter.errors import TemplateError
from newsletter.issues.htmltext import cap_line_length, excerpt_html, html_to_text, top_blocks
from newsletter.issues.layout import fit_to_column
from newsletter.issues.placeholder import UNSUBSCRIBE_URL, mark_placeholder, new_placeholder
from newsletter.issues.templating import render_template
from newsletter.phases import CSS_INLINING, phase
from newsletter.settingvalues import story_content_mode

SUBJECT_LIMIT = 200
SUMMARY_LIMITS = {"max_chars": 1000, "max_paragraphs": 3}  # a feed's own summary: cut only if long
CONTENT_LIMITS = {"max_chars": 600, "max_paragraphs": 2}  # full content: the opening only
TEXT_WIDTH = 72
_MONTHS = (  # English names whatever the machine's locale
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
)
# Bidirectional overrides can disguise a subject; everything else invisible is kept (emoji ZWJ).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_URL_DROPPED = {ord(c): None for c in "\r\n\t"}
_IMG_SRC = re.compile(r'<img\b[^>]*\ssrc="([^"]*)"')
_WP_SIZE_SUFFIX = re.compile(r"-(?:\d+x\d+|scaled)(?=\.\w+$)")


@dataclass(frozen=True)
class RenderedIssue:
    subject: str  # one line, no control characters
    html: str  # placeholder comment + full document, CSS inlined, contains `placeholder`
    text: str  # real plain-text version, contains `placeholder`
    placeholder: str = UNSUBSCRIBE_URL  # where the unsubscribe URL goes, this issue only
    truncated_story_titles: tuple[str, ...] = ()  # stories cut short to stay under Gmail's clip


class StoryLike(Protocol):
    """What a story must offer: issues.feed.FeedStory and models.Story both do. Read-only
    properties, so a frozen FeedStory fits as well as a mutable Story row."""

    @property
    def title(self) -> str: ...
    @property
    def link(self) -> str | None: ...
    @property
    def author(self) -> str | None: ...
    @property
    def summary_html(self) -> str: ...
    @property
    def content_html(self) -> str: ...
    @property
    def image_url(self) -> str | None: ...
    @property
    def image_alt(self) -> str | None: ...
    @property
    def published_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class StoryView:
    """A story as the templates see it: links checked, summary cut, dates formatted."""

    title: str
    link: str | None
    author: str | None
    date: str | None  # "12 March 2025"
    date_iso: str | None  # "2025-03-12"
    image_url: str | None
    image_alt: str  # "" marks the image as decorative
    summary_html: Markup  # what the story shows (summary or whole post), sanitised upstream
    summary_text: str  # the same as wrapped plain text
    mode: str = "summary"  # "summary", "full" or "title" (NEWSLETTER_STORY_CONTENT)
    truncated: bool = False  # cut at a paragraph boundary: "Continue reading on the site"


def normalise_subject(text: str, limit: int = SUBJECT_LIMIT) -> str:
    """One line of at most `limit` characters: header-safe whatever the feed sent."""
    chars = []
    for char in text:
        if char in _BIDI_CONTROLS:
            continue
        category = unicodedata.category(char)
        chars.append(" " if category in ("Cc", "Zl", "Zp") or char.isspace() else char)
    subject = " ".join("".join(chars).split())
    if len(subject) > limit:
        cut = subject[: limit - 1]
        if " " in cut[limit // 2 :]:
            cut = cut.rsplit(" ", 1)[0]
        subject = cut.rstrip(" ,;:-–—") + "…"
    return subject


def newest_first(stories: Sequence[StoryLike]) -> list[StoryLike]:
    """Newest first; undated stories keep their feed order after the dated ones."""
    return sorted(
        stories,
        key=lambda s: (s.published_at is None, -_timestamp(s.published_at)),
    )


def _timestamp(when: datetime | None) -> float:
    if when is None:
        return 0.0
    if when.tzinfo is None:  # treat naive as UTC rather than crash on the comparison
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def render_subject(
    stories: Sequence[StoryLike],
    settings: Settings,
    *,
    feed_title: str = "",
    feed_link: str | None = None,
    issue_id: int | None = None,
) -> str:
    """The subject from subject.txt (default: newest title + " + N more"), on one line."""
    views = [story_view(s) for s in newest_first(stories)]
    context = _base_context(views, settings, issue_id, feed_title, feed_link)
    return _subject_from(context, settings)


def render_issue(
    stories: Sequence[StoryLike],
    settings: Settings,
    *,
    issue_id: int | None,
    feed_title: str,
    feed_link: str | None,
    max_blocks: int | None = None,
) -> RenderedIssue:
    """Subject, inlined HTML and text for one issue; the same words in both bodies.

    `max_blocks` cuts each story's body after that many top-level blocks (the
    clipping guard's last resort, see newsletter.issues.create); the titles of
    the stories so cut are listed in `truncated_story_titles`.
    """
    settings.require("postal_address")  # CAN-SPAM: every email carries it
    mode = content_mode(settings)
    views = [story_view(s, mode, max_blocks) for s in newest_first(stories)]
    context = _base_context(views, settings, issue_id, feed_title, feed_link)
    subject = _subject_from(context, settings)
    context["subject"] = subject
    key, placeholder = new_placeholder()
    context["unsubscribe_url"] = placeholder
    html, text = render_bodies(settings, "email", context, placeholder=placeholder)
    return RenderedIssue(
        subject=subject,
        html=mark_placeholder(key, html),
        text=text,
        placeholder=placeholder,
        truncated_story_titles=tuple(v.title for v in views if v.truncated),
    )


def render_bodies(
    settings: Settings,
    stem: str,
    context: Mapping[str, Any],
    *,
    placeholder: str | None = None,
) -> tuple[str, str]:
    """(HTML, text) of one email from `{stem}.html` (CSS inlined) and `{stem}.txt` (lines capped).

    One path for every email, so the issue, the welcome and the confirmation are
    inlined and wrapped alike. `placeholder`: the body is rendered once for many
    readers and each one's unsubscribe link goes there later, so both bodies must
    hold it; a template without the link is refused before anything is sent.
    """
    html_name, text_name = f"{stem}.html", f"{stem}.txt"
    html = _inline_css(render_template(settings, html_name, context), html_name)
    text = cap_line_length(render_template(settings, text_name, context).strip() + "\n")
    for name, body in ((html_name, html), (text_name, text)):
        if placeholder is not None and placeholder not in body:
            raise TemplateError(
                f"Template {name!r} has no unsubscribe link: "
                "it must contain {{ unsubscribe_url }}"
            )
    return html, text


def content_mode(settings: Settings) -> str:
    """The settings' content mode, checked again: a CLI override may bypass load_settings."""
    return story_content_mode(str(getattr(settings, "story_content", "summary")))


def story_blocks(story: StoryLike, mode: str) -> int:
    """How many top-level blocks the story's body has in `mode` (its possible cut points)."""
    return len(top_blocks(_body_html(story, mode)))


def _inline_css(html: str, name: str) -> str:
    """Inline the <style> rules once per email; @media rules and !important stay in <style>.

    `name` is the template the HTML came from, for the error a broken one gives.
    """
    with phase(CSS_INLINING):
        from premailer import Premailer

        try:
            inlined = Premailer(
                html,
                allow_network=False,  # never fetch a stylesheet named in a template
                strip_important=False,  # keep mobile and dark-mode overrides winning
                keep_style_tags=True,  # @media rules cannot be inlined
                cssutils_logging_level=logging.CRITICAL,
                remove_classes=False,
                disable_validation=True,
                base_url=None,
                # keep width="600"/width="552" for Outlook; CSS width:100% must not overwrite them
                disable_basic_attributes=["width", "height"],
            ).transform()
        except Exception as exc:  # premailer/lxml/cssutils raise many types on a broken template
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise TemplateError(f"Template {name!r}: CSS inlining failed: {message}") from None
    return inlined.strip() + "\n"


def _subject_from(context: dict[str, Any], settings: Settings) -> str:
    subject = normalise_subject(render_template(settings, "subject.txt", context))
    return subject or normalise_subject(context["list_title"])


def _base_context(
    views: list[StoryView],
    settings: Settings,
    issue_id: int | None,
    feed_title: str,
    feed_link: str | None,
) -> dict[str, Any]:
    site_url = safe_url(feed_link) or settings.base_url
    site_name = _host(site_url) or feed_title or settings.list_title
    titles = " · ".join(v.title for v in views)
    return {
        "stories": views,
        "list_title": settings.list_title,
        "feed_title": feed_title,
        "site_url": site_url,
        "site_name": site_name,
        "issue_url": settings.url(f"issues/{issue_id}") if issue_id is not None else None,
        "postal_address": settings.postal_address or "",
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "preheader": normalise_subject(titles, 140),
        "subject": "",
        "content_mode": views[0].mode if views else "summary",
    }


def _body_html(story: StoryLike, mode: str) -> str:
    """The story's body in `mode`, fitted to the column; "" in title mode."""
    if mode == "title":
        return ""
    if mode == "full":
        body = (story.content_html or "").strip() or (story.summary_html or "")
    elif (story.summary_html or "").strip():
        body = excerpt_html(story.summary_html, **SUMMARY_LIMITS)
    else:
        body = excerpt_html(story.content_html or "", **CONTENT_LIMITS)
    return fit_to_column(body)


def story_view(story: StoryLike, mode: str = "summary", max_blocks: int | None = None) -> StoryView:
    """What the templates show of one story (the email's and the web archive's alike);
    `max_blocks` cuts a long body at a top-level block."""
    summary = _body_html(story, mode)
    truncated = False
    if max_blocks is not None:
        blocks = top_blocks(summary)
        if len(blocks) > max_blocks:
            summary, truncated = "".join(blocks[:max_blocks]), True
    image_url = safe_url(story.image_url, schemes=("http", "https"))
    if mode == "title" or (mode == "full" and image_url and _shows_image(summary, image_url)):
        image_url = None  # title only; or the post already shows its first image
    when = story.published_at
    return StoryView(
        title=" ".join((story.title or "").split()) or "(untitled)",
        link=safe_url(story.link),
        author=" ".join(story.author.split()) if story.author else None,
        date=f"{when.day} {_MONTHS[when.month - 1]} {when.year}" if when else None,
        date_iso=when.date().isoformat() if when else None,
        image_url=image_url,
        image_alt=" ".join((story.image_alt or "").split()),
        summary_html=Markup(summary),  # noqa: S704 - sanitised by newsletter.issues.feed
        summary_text=html_to_text(summary, TEXT_WIDTH),
        mode=mode,
        truncated=truncated,
    )


def _shows_image(html: str, url: str) -> bool:
    """True when `html` has an <img> of `url`, in any of the sizes WordPress makes of it."""
    wanted = _image_key(url)
    return any(_image_key(unescape(src)) == wanted for src in _IMG_SRC.findall(html))


def _image_key(url: str) -> str:
    """host + path without WordPress's size suffix: photo-1024x683.jpg is photo.jpg."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url
    return (parts.hostname or "") + _WP_SIZE_SUFFIX.sub("", parts.path)


def safe_url(url: str | None, schemes: tuple[str, ...] = ("http", "https", "mailto")) -> str | None:
    """The URL if it is absolute with an allowed scheme, else None (no javascript: links)."""
    if not url:
        return None
    url = url.strip().translate(_URL_DROPPED).replace(" ", "%20")  # as browsers do
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in schemes or not (parts.netloc or parts.scheme == "mailto"):
        return None
    return url


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.removeprefix("www.") if host else None
