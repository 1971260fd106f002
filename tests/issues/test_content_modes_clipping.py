"""The Gmail clipping guard in every content mode (issue 13): older stories wait for the next
issue, and a story that alone passes the limit is cut at a paragraph boundary with
"Continue reading on the site"."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from newsletter.issues.create import MAX_HTML_BYTES, create_issue, render_within_size
from newsletter.issues.feed import Feed, FeedStory
from newsletter.issues.placeholder import split_placeholder
from newsletter.issues.render import render_issue
from tests.support.helpers import content_mode_settings, with_subscribers

MODES = ("summary", "full", "title")


def paragraph(n: int) -> str:
    return (
        f"<p>Paragraph {n} begins. "
        + "Restraint and seclusion harm children. " * 12
        + (f"Paragraph {n} ends.</p>")
    )


def huge_story(title: str = "A very long report", paragraphs: int = 400, day: int = 1) -> FeedStory:
    return FeedStory(
        uid=f"guid:{title}",
        title=title,
        link=f"https://endseclusion.org/2025/{day:02d}/long-report/",
        guid=title,
        author="AASR Staff",
        summary_html="<p>A summary.</p>",
        content_html="<h2>Findings</h2>" + "".join(paragraph(n) for n in range(paragraphs)),
        image_url=None,
        image_alt=None,
        published_at=datetime(2025, 3, day, tzinfo=UTC),
    )


class _Balance(HTMLParser):
    """Counts open <p> elements: a cut inside a paragraph would leave one open."""

    def __init__(self) -> None:
        super().__init__()
        self.open = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open += tag == "p"

    def handle_endtag(self, tag: str) -> None:
        self.open -= tag == "p"


def test_a_story_too_long_alone_is_cut_at_a_paragraph_boundary(tmp_path: Path) -> None:
    settings = content_mode_settings(tmp_path, "full")
    story = huge_story()
    rendered, chosen = render_within_size(
        [story], settings, issue_id=1, feed_title="AASR", feed_link="https://endseclusion.org"
    )
    assert chosen == [story]
    assert rendered.truncated_story_titles == ("A very long report",)
    assert len(rendered.html.encode("utf-8")) <= MAX_HTML_BYTES
    kept = [int(n) for n in re.findall(r"Paragraph (\d+) ends\.</p>", rendered.html)]
    begun = [int(n) for n in re.findall(r"Paragraph (\d+) begins\.", rendered.html)]
    assert kept == begun == list(range(len(kept)))  # whole paragraphs, from the first
    assert 50 < len(kept) < 400
    assert f"Paragraph {len(kept)} begins" not in rendered.text
    # as late as fits: one more paragraph would pass the limit
    longer = render_issue(
        [story],
        settings,
        issue_id=1,
        feed_title="AASR",
        feed_link="https://endseclusion.org",
        max_blocks=len(kept) + 2,  # the <h2> is the first block
    )
    assert len(longer.html.encode("utf-8")) > MAX_HTML_BYTES
    balance = _Balance()
    balance.feed(split_placeholder(rendered.html)[1])
    assert balance.open == 0
    link = "https://endseclusion.org/2025/01/long-report/"
    assert re.search(rf'<a href="{link}"[^>]*>Continue reading on the site<span', rendered.html)
    assert f"Continue reading on the site: {link}" in rendered.text
    assert "Read on the site" not in rendered.html
    assert rendered.placeholder in rendered.html.split("Continue reading on the site")[1]


@pytest.mark.parametrize("mode", MODES)
def test_older_stories_wait_for_the_next_issue_in_every_mode(tmp_path: Path, mode: str) -> None:
    settings = content_mode_settings(tmp_path, mode)
    if mode == "full":
        stories = [huge_story(f"Report {day}", 60, day) for day in range(10, 0, -1)]
    else:  # summaries and titles are small: it takes many more stories to pass the limit
        stories = [
            replace(huge_story(f"Report {n} " + "with a long headline " * 12, 1, 1), uid=f"u{n}")
            for n in range(400 if mode == "title" else 120)
        ]
    rendered, chosen = render_within_size(
        stories, settings, issue_id=1, feed_title="AASR", feed_link="https://endseclusion.org"
    )
    assert 1 < len(chosen) < len(stories)
    assert chosen == stories[: len(chosen)]  # the newest kept, the oldest wait
    assert len(rendered.html.encode("utf-8")) <= MAX_HTML_BYTES
    assert rendered.truncated_story_titles == ()
    one_more = render_issue(
        stories[: len(chosen) + 1],
        settings,
        issue_id=1,
        feed_title="AASR",
        feed_link="https://endseclusion.org",
    )
    assert len(one_more.html.encode("utf-8")) > MAX_HTML_BYTES


def test_create_issue_records_the_cut_story_and_says_so(tmp_path: Path) -> None:
    settings, engine = with_subscribers(
        tmp_path, ["parent@example.org"], NEWSLETTER_STORY_CONTENT="full"
    )
    feed = Feed(title="AASR", link="https://endseclusion.org", stories=[huge_story()])
    created = create_issue(engine, settings, feed)
    assert created.issue is not None
    assert created.truncated_story_titles == ("A very long report",)
    assert created.held_back == 0
    assert "Continue reading on the site" in created.issue.html
    assert len(created.issue.html.encode("utf-8")) <= MAX_HTML_BYTES
