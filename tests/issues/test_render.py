"""Rendering: golden files, the unsubscribe placeholder, subjects, accessibility, size.

Regenerate the golden files after an intended change with:

    UPDATE_GOLDEN=1 python -m pytest tests/issues/test_render.py
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError, TemplateError
from newsletter.issues.placeholder import UNSUBSCRIBE_URL, split_placeholder
from newsletter.issues.render import (
    normalise_subject,
    render_bodies,
    render_issue,
    render_subject,
)
from newsletter.issues.templating import builtin_templates_dir, template_env
from tests.support.helpers import feed_story

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


@dataclass(frozen=True)
class Story:
    title: str
    link: str | None = "https://endseclusion.org/story/"
    author: str | None = None
    summary_html: str = ""
    content_html: str = ""
    image_url: str | None = None
    image_alt: str | None = None
    published_at: datetime | None = None


STORIES = [
    Story(  # given out of order on purpose: rendering sorts newest first
        title="Siobhán — “quotes” ✊ & a ruling on restraint",
        link="https://endseclusion.org/2025/03/ruling/",
        author="Siobhán Ní Bhriain",
        summary_html=(
            "<p>A state court ruled that <strong>prone restraint</strong> of a "
            '9-year-old was unlawful. Read the <a href="https://endseclusion.org/ruling.pdf">'
            "full decision</a> &amp; our statement.</p>"
        ),
        image_url="https://endseclusion.org/wp-content/uploads/court.jpg",
        image_alt="The courthouse steps",
        published_at=datetime(2025, 3, 10, 15, 0, tzinfo=UTC),
    ),
    Story(
        title="Supporting Youth in Residential Care",
        link="https://endseclusion.org/2025/03/residential-care/",
        author="AASR Staff",
        summary_html=(
            "<p>Families told us what helps.</p><ul><li>Trauma-informed staff</li>"
            "<li>Daily contact with home</li></ul>"
        ),
        image_url=None,
        published_at=datetime(2025, 3, 12, 9, 30, tzinfo=UTC),
    ),
    Story(
        title="What the new federal guidance means for your child",
        link="https://endseclusion.org/2025/03/guidance/",
        author=None,
        summary_html="",
        content_html=(
            '<figure><img src="https://endseclusion.org/a.jpg" alt=""></figure>'
            "<p>The Department of Education published guidance on seclusion.</p>"
            "<blockquote><p>No child should be locked in a room.</p></blockquote>"
            "<p>This third paragraph is left out of the excerpt.</p>"
        ),
        image_url="https://endseclusion.org/wp-content/uploads/guidance.png",
        image_alt=None,
        published_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
    ),
]


def make_settings(tmp_path: Path, **extra: str) -> Settings:
    environ = {
        "NEWSLETTER_FROM": "AASR <news@endseclusion.org>",
        "NEWSLETTER_BASE_URL": "https://news.endseclusion.org",
        "NEWSLETTER_POSTAL_ADDRESS": "AASR, PO Box 1234, Springfield, IL 62701, USA",
        "NEWSLETTER_TEMPLATES_DIR": str(tmp_path / "no-custom-templates"),
        **extra,
    }
    return load_settings(environ=environ, env_file=tmp_path / "missing.env")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def render_raw(settings: Settings, stories: list[Story] | None = None, issue_id: int | None = 42):
    return render_issue(
        STORIES if stories is None else stories,
        settings,
        issue_id=issue_id,
        feed_title="Alliance Against Seclusion and Restraint",
        feed_link="https://endseclusion.org/",
    )


def render(settings: Settings, stories: list[Story] | None = None, issue_id: int | None = 42):
    """The issue with its random placeholder shown as UNSUBSCRIBE_URL (stable golden files)."""
    issue = render_raw(settings, stories, issue_id)
    placeholder, html = split_placeholder(issue.html)
    assert placeholder == issue.placeholder != UNSUBSCRIBE_URL
    return replace(
        issue,
        html=html.replace(placeholder, UNSUBSCRIBE_URL),
        text=issue.text.replace(placeholder, UNSUBSCRIBE_URL),
    )


def long_story(n: int) -> Story:
    body = "".join(
        f"<p>Paragraph {i} of story {n}: " + "restraint and seclusion harm children. " * 40 + "</p>"
        for i in range(30)
    )
    return Story(
        title=f"Story {n}: " + "a very long headline about school discipline " * 4,
        link=f"https://endseclusion.org/2025/story-{n}/" + "x" * 80,
        author="A. Writer",
        summary_html=body if n % 2 else "",
        content_html=body,
        image_url=f"https://endseclusion.org/img/{n}.jpg",
        image_alt="A classroom",
        published_at=datetime(2025, 1, n + 1, tzinfo=UTC),
    )


# -- golden files -----------------------------------------------------------


@pytest.mark.parametrize("part", ["html", "text"])
def test_golden(settings: Settings, part: str) -> None:
    issue = render(settings)
    actual = getattr(issue, part)
    path = GOLDEN / f"render-issue.{'html' if part == 'html' else 'txt'}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
    assert actual.encode("utf-8") == path.read_bytes()


def test_placeholder_survives_verbatim(settings: Settings) -> None:
    issue = render(settings)
    assert f'href="{UNSUBSCRIBE_URL}"' in issue.html
    assert f"Unsubscribe: {UNSUBSCRIBE_URL}\n" in issue.text
    for escaped in ("%25%25", "&#37;", "%%UNSUBSCRIBE_URL%%%"):
        assert escaped not in issue.html


def test_both_parts_say_the_same_things(settings: Settings) -> None:
    issue = render(settings)
    for words in (
        "You are receiving this because you subscribed to AASR updates at",
        "AASR, PO Box 1234, Springfield, IL 62701, USA",
        "Read the full story",
        "View in your browser",
        "https://news.endseclusion.org/issues/42",
        "Siobhán — “quotes” ✊ &",
        "Families told us what helps.",
        "No child should be locked in a room.",
    ):
        assert words in issue.text, words
        assert words.replace("&", "&amp;") in issue.html, words
    assert "third paragraph" not in issue.html
    assert "- Trauma-informed staff\n- Daily contact with home" in issue.text
    assert "full decision <https://endseclusion.org/ruling.pdf>" in issue.text
    assert max(len(line) for line in issue.text.splitlines()) <= 80


def test_stories_newest_first_with_image_alt(settings: Settings) -> None:
    html = render(settings).html
    titles = re.findall(r"<h2[^>]*>.*?<a [^>]*>(.*?)</a>", html)
    assert titles[0] == "Supporting Youth in Residential Care"
    assert titles[1].startswith("Siobhán")
    assert 'alt="The courthouse steps"' in html
    assert 'src="https://endseclusion.org/wp-content/uploads/guidance.png" alt=""' in html
    assert "https://endseclusion.org/a.jpg" not in html  # content images stay out of excerpts


def test_feed_story_objects_render(settings: Settings) -> None:
    story = feed_story(
        "From the feed", link="https://endseclusion.org/feed-story/", summary_html="<p>Hello.</p>"
    )
    issue = render(settings, [story])
    assert issue.subject == "From the feed"
    assert "Hello." in issue.text


def test_no_view_online_link_without_issue_id(settings: Settings) -> None:
    issue = render(settings, issue_id=None)
    assert "View in your browser" not in issue.html
    assert "View in your browser" not in issue.text


def test_postal_address_is_required(tmp_path: Path) -> None:
    settings = replace(make_settings(tmp_path), postal_address=None)
    with pytest.raises(ConfigError, match="NEWSLETTER_POSTAL_ADDRESS"):
        render(settings)


# -- subject ------------------------------------------------------------------


def test_subject_newest_plus_count(settings: Settings) -> None:
    assert render(settings).subject == "Supporting Youth in Residential Care + 2 more"
    assert render_subject(STORIES[:1], settings) == STORIES[0].title
    assert render_subject([], settings) == "AASR"


@pytest.mark.parametrize(
    "breaker", ["\r\n", "\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x00"]
)
def test_subject_is_one_line(settings: Settings, breaker: str) -> None:
    story = Story(title=f"Bcc: x@evil.example{breaker}Subject:  hi ", published_at=None)
    subject = render_issue([story], settings, issue_id=None, feed_title="", feed_link=None).subject
    assert subject == "Bcc: x@evil.example Subject: hi"
    assert not any(c in subject for c in "\r\n\u2028\u2029\x85\x0b\x00")


def test_subject_length_cap(settings: Settings) -> None:
    subject = render_subject([long_story(n) for n in range(10)], settings)
    assert len(subject) <= 200
    assert subject.endswith("… + 9 more")
    subject = normalise_subject("word " * 100)
    assert len(subject) <= 200
    assert subject.endswith("word…")
    assert normalise_subject("\u202eevil\u202c  title\t") == "evil title"


# -- HTML safety and accessibility --------------------------------------------


def test_hostile_title_is_escaped(settings: Settings) -> None:
    story = Story(title="<script>alert(1)</script> & co", link="javascript:alert(1)")
    issue = render(settings, [story])
    assert "<script" not in issue.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in issue.html
    assert "javascript:" not in issue.html
    assert "<script>alert(1)</script> & co" in issue.text


def test_accessible_structure(settings: Settings) -> None:
    html = render(settings).html
    assert re.search(r'<html lang="en"', html)
    assert '<meta charset="utf-8">' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "<title>Supporting Youth in Residential Care + 2 more</title>" in html
    tables = re.findall(r"<table\b[^>]*>", html)
    assert tables and all('role="presentation"' in t for t in tables)
    assert re.findall(r"<h(\d)", html) == ["1", "2", "2", "2"]
    assert not re.search(r"<link\b[^>]*stylesheet", html, re.I)
    assert "<script" not in html.lower()
    assert "@import" not in html and "fonts.googleapis" not in html
    assert re.search(r'<a class="unsubscribe" href="%%UNSUBSCRIBE_URL%%"[^>]*>Unsubscribe', html)


def test_css_inlined_and_media_queries_kept(settings: Settings) -> None:
    html = render(settings).html
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    assert "@media (prefers-color-scheme: dark)" in style.group(1)
    assert "@media only screen and (max-width: 620px)" in style.group(1)
    assert "!important" in style.group(1)
    assert re.search(r'<td class="story" style="[^"]*padding', html)
    assert re.search(
        r'<table role="presentation" class="container"[^>]*style="[^"]*max-width:600px', html
    )


def test_ten_long_stories_stay_under_gmail_clipping(settings: Settings) -> None:
    issue = render(settings, [long_story(n) for n in range(10)])
    assert len(issue.html.encode("utf-8")) < 100_000
    assert UNSUBSCRIBE_URL in issue.html
    assert max(len(line) for line in issue.text.splitlines()) < 998
    assert issue.html.count("<h2") == 10


# -- templates ----------------------------------------------------------------


def own_templates(tmp_path: Path, files: dict[str, str]) -> Settings:
    """Settings whose NEWSLETTER_TEMPLATES_DIR holds `files` (name: text), a site's overrides."""
    folder = tmp_path / "own-templates"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return make_settings(tmp_path, NEWSLETTER_TEMPLATES_DIR=str(folder))


def test_custom_templates_dir_wins_and_falls_back(tmp_path: Path) -> None:
    settings = own_templates(tmp_path, {"subject.txt": "News: {{ stories|length }} stories"})
    issue = render(settings)
    assert issue.subject == "News: 3 stories"
    assert "Read the full story" in issue.html  # email.html from the built-ins


def test_template_syntax_error_is_one_line(tmp_path: Path) -> None:
    settings = own_templates(tmp_path, {"subject.txt": "{% if stories %}\n{{ oops"})
    with pytest.raises(TemplateError) as info:
        render(settings)
    assert "subject.txt" in str(info.value)
    assert "\n" not in str(info.value)


def test_template_undefined_and_missing(tmp_path: Path) -> None:
    settings = own_templates(tmp_path, {"subject.txt": "{{ no_such_thing }}"})
    custom = settings.templates_dir
    with pytest.raises(TemplateError, match=r"subject.txt.*no_such_thing"):
        render(settings)
    (custom / "email.html").write_text("{% include 'nope.html' %}", encoding="utf-8")
    (custom / "subject.txt").write_text("ok", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"nope.html"):
        render(settings)


def test_an_overridden_partial_reaches_every_email_that_includes_it(tmp_path: Path) -> None:
    """docs/templates.md: a site changes what the emails share by overriding one partial."""
    head = (builtin_templates_dir() / "_head.html").read_text(encoding="utf-8")
    ours = head.replace("<head>\n", '<head>\n<meta name="x-site" content="ours">\n')
    settings = own_templates(tmp_path, {"_head.html": ours})
    assert 'content="ours"' in render(settings).html
    confirm = {
        "subject": "Please confirm",
        "list_title": "AASR",
        "postal_address": "",
        "content_mode": "summary",
        "button_label": "Confirm",
        "expires_days": 7,
        "confirm_url": "https://x.org/c",
        "unsubscribe_url": "https://x.org/u",
    }
    html, text = render_bodies(settings, "confirm_email", confirm)
    assert 'content="ours"' in html
    assert "https://x.org/c" in text


def test_template_without_unsubscribe_is_refused(tmp_path: Path) -> None:
    settings = own_templates(tmp_path, {"email.txt": "{{ list_title }}"})
    with pytest.raises(TemplateError, match=r"email.txt"):
        render(settings)


def test_environment_is_cached_and_escapes_html_only(settings: Settings) -> None:
    env = template_env(settings)
    assert template_env(settings) is env
    assert (builtin_templates_dir() / "email.html").is_file()
    assert env.from_string("{{ x }}").render(x="<b>") == "<b>"
    assert env.autoescape("email.html") is True
    assert env.autoescape("email.txt") is False


# -- the per-issue placeholder (issue 11.3) ------------------------------------------


def test_each_issue_has_its_own_unguessable_placeholder(settings: Settings) -> None:
    first, second = render_raw(settings), render_raw(settings)
    assert first.placeholder != second.placeholder
    assert re.fullmatch(r"%%UNSUBSCRIBE_URL_[0-9a-f]{32}%%", first.placeholder)
    assert first.html.startswith("<!--newsletter-placeholder:")
    assert split_placeholder(first.html)[0] == first.placeholder
    assert first.placeholder in first.text and UNSUBSCRIBE_URL not in first.html


def test_a_placeholder_comment_later_in_the_html_is_ignored() -> None:
    forged = "<p>x</p>\n<!--newsletter-placeholder:" + "a" * 32 + "-->\n"
    assert split_placeholder(forged) == (UNSUBSCRIBE_URL, forged)
