"""Content modes (issue 13): NEWSLETTER_STORY_CONTENT = summary | full | title.

A real WordPress-shaped feed (tests/data/feeds/wordpress-full.xml: block and
classic editor posts with srcset images, a YouTube and a Vimeo embed, captions,
galleries, a pull quote, a table, a code block, an emoji image, <h1>/<h2> inside
a post, and an item without content:encoded) is rendered in each mode and
compared with golden files. Regenerate them after an intended change with:

    UPDATE_GOLDEN=1 python -m pytest tests/issues/test_content_modes.py

The Gmail clipping guard in every mode is in test_content_modes_clipping.py.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from newsletter.config import Settings, known_names
from newsletter.errors import ConfigError
from newsletter.issues.feed import Feed, FeedStory, parse_feed
from newsletter.issues.layout import COLUMN_WIDTH, demote_headings, fit_to_column
from newsletter.issues.placeholder import UNSUBSCRIBE_URL, split_placeholder
from newsletter.issues.render import RenderedIssue, render_issue
from tests.support.helpers import PlainStory, content_mode_settings

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "golden"
FEED = DATA / "feeds" / "wordpress-full.xml"
MODES = ("summary", "full", "title")


def wordpress_feed() -> Feed:
    return parse_feed(FEED.read_bytes(), base_url="https://endseclusion.org/feed/")


def render(settings: Settings, stories: list[FeedStory] | None = None) -> RenderedIssue:
    """The fixture's issue, its random placeholder shown as UNSUBSCRIBE_URL (stable goldens)."""
    feed = wordpress_feed()
    issue = render_issue(
        feed.stories if stories is None else stories,
        settings,
        issue_id=7,
        feed_title=feed.title,
        feed_link=feed.link,
    )
    placeholder, html = split_placeholder(issue.html)
    return replace(
        issue,
        html=html.replace(placeholder, UNSUBSCRIBE_URL),
        text=issue.text.replace(placeholder, UNSUBSCRIBE_URL),
    )


def story_cells(html: str) -> list[str]:
    return re.findall(r'<td class="story[^"]*"[^>]*>(.*?)</td>\s*</tr>', html, re.S)


# -- the setting ----------------------------------------------------------------------------


def test_summary_is_the_default_and_the_name_is_known(tmp_path: Path) -> None:
    assert content_mode_settings(tmp_path).story_content == "summary"
    assert "NEWSLETTER_STORY_CONTENT" in known_names()
    assert content_mode_settings(tmp_path, " Full ").story_content == "full"


def test_a_bad_mode_is_a_one_line_error_naming_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        content_mode_settings(tmp_path, "excerpt")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "NEWSLETTER_STORY_CONTENT: 'excerpt' is not a content mode (use summary, full or title)"
    )


def test_a_run_overrides_the_mode_with_dataclasses_replace(tmp_path: Path) -> None:
    settings = content_mode_settings(tmp_path)
    assert "Watch the video on YouTube" not in render(settings).html
    assert "Watch the video on YouTube" in render(replace(settings, story_content="full")).html
    with pytest.raises(ConfigError, match="NEWSLETTER_STORY_CONTENT"):
        render(replace(settings, story_content="everything"))


# -- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["html", "text"])
@pytest.mark.parametrize("mode", MODES)
def test_golden(tmp_path: Path, mode: str, part: str) -> None:
    issue = render(content_mode_settings(tmp_path, mode))
    actual = getattr(issue, part)
    path = GOLDEN / f"content-{mode}.{'html' if part == 'html' else 'txt'}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_bytes(actual.encode("utf-8"))
    assert actual.encode("utf-8") == path.read_bytes()


# -- summary --------------------------------------------------------------------------------


def test_summary_shows_the_feeds_excerpt_and_a_read_more_link(tmp_path: Path) -> None:
    issue = render(content_mode_settings(tmp_path, "summary"))
    assert issue.html.count("Read the full story<span") == 3
    assert "Two hundred families answered our survey" in issue.html
    for absent in ("What we asked", "School year", "<pre", "Watch the video"):
        assert absent not in issue.html, absent


# -- full -----------------------------------------------------------------------------------


@pytest.fixture
def full(tmp_path: Path) -> RenderedIssue:
    return render(content_mode_settings(tmp_path, "full"))


def test_full_shows_the_whole_post(full: RenderedIssue) -> None:
    for words in (
        "What we asked",
        "Families reporting seclusion",
        "Nobody called me. I found out from the bruises on his arms.",
        "They became calmer.",
        "survey.groupby",
        "research@endseclusion.org",
        "From eleven rooms to none",
        "It\u00b4s a small thing",  # the mojibake "\u00c2\u00b4" repaired
        "Thank you all 🙏",  # img.wp-smiley became the emoji itself
    ):
        assert words in full.html, words
    assert full.html.count("Read on the site<span") == 3
    assert "Read the full story" not in full.html
    assert "appeared first on" not in full.html and "Continue reading" not in full.html


def test_full_falls_back_to_the_summary_when_the_feed_has_no_content(
    full: RenderedIssue,
) -> None:
    [senators] = [cell for cell in story_cells(full.html) if "Call your senators" in cell]
    assert "A five-minute call makes a difference" in senators
    assert "Read on the site" in senators


def test_full_is_safe(full: RenderedIssue) -> None:
    lowered = full.html.lower()
    for bad in ("<script", "<iframe", "<video", "<object", "javascript:", " onload", " onerror"):
        assert bad not in lowered, bad
    assert "srcset" not in lowered and "sizes=" not in lowered
    assert "s.w.org/images/core/emoji" not in full.html
    assert "gravatar" not in lowered


def test_full_headings_sit_below_the_story_heading_without_gaps(full: RenderedIssue) -> None:
    levels = [int(level) for level in re.findall(r"<h([1-6])\b", full.html)]
    assert levels.count(1) == 1  # the newsletter's own name
    for story in story_cells(full.html):
        inside = [int(level) for level in re.findall(r"<h([1-6])\b", story)]
        assert inside[0] == 2  # the story's title
        assert all(level >= 3 for level in inside[1:])
        assert all(b - a <= 1 for a, b in itertools.pairwise(inside)), inside
    assert re.search(r"<h3[^>]*>From eleven rooms to none</h3>", full.html)  # was an <h1>
    assert re.search(r"<h3[^>]*>What we asked</h3>", full.html)  # was an <h2>
    assert re.search(r"<h4[^>]*>The numbers</h4>", full.html)  # was an <h3>


def test_full_images_fit_the_column_and_keep_their_alt_text(full: RenderedIssue) -> None:
    images = re.findall(r"<img\b[^>]*>", full.html)
    assert len(images) == 8
    for tag in images:
        assert re.search(r'\balt="', tag), tag
        assert "max-width:100%" in tag.replace(" ", ""), tag
        assert "height:auto" in tag.replace(" ", ""), tag
        width = re.search(r'\swidth="(\d+)"', tag)
        assert width is None or int(width.group(1)) <= COLUMN_WIDTH, tag
    families = next(tag for tag in images if "families-1024x683" in tag)
    assert 'width="552"' in families and "height=" not in families  # height:auto does it
    assert 'alt="Parents and children at a table covered in survey forms"' in families
    assert 'width="150"' in next(tag for tag in images if "calm-corner" in tag)


def test_full_does_not_show_the_featured_image_twice(full: RenderedIssue) -> None:
    room = 'src="https://endseclusion.org/wp-content/uploads/2025/03/room.jpg"'
    assert full.html.count(room) == 1
    assert full.html.count("families-1024x683.jpg") == 1
    assert 'class="story-image"' not in full.html


def test_full_embeds_become_a_linked_paragraph_naming_the_video(full: RenderedIssue) -> None:
    assert re.search(
        r'<p[^>]*><a href="https://www.youtube.com/watch\?v=Xq3bC9kLm2A"[^>]*>'
        r"Watch the video on YouTube: AASR listening session, February 2025</a></p>",
        full.html,
    )
    assert re.search(
        r'<p[^>]*><a href="https://vimeo.com/912345678"[^>]*>'
        r"Watch the video on Vimeo: Interview with the principal</a></p>",
        full.html,
    )
    assert "ytimg" not in full.html and "img.youtube" not in full.html  # no invented thumbnail


def test_full_lays_out_captions_tables_code_and_quotes_for_a_phone(full: RenderedIssue) -> None:
    def style_of(tag: str, containing: str) -> str:
        style = r"""style=(?:"([^"]*)"|'([^']*)')"""
        pattern = rf"<{tag}\b[^>]*{style}[^>]*>(?:(?!</?{tag}\b).)*{containing}"
        match = re.search(pattern, full.html, re.S)
        assert match is not None, (tag, containing)
        return (match.group(1) or match.group(2)).replace(" ", "")

    assert "white-space:pre-wrap" in style_of("pre", "survey.groupby")
    assert "overflow-wrap:anywhere" in style_of("pre", "survey.groupby")
    assert "width:100%" in style_of("table", "School year")
    assert "word-break:break-word" in style_of("td", "61%")
    assert "color:#4a5560" in style_of("figcaption", "Families at our February")
    assert "border-left" in style_of("blockquote", "Nobody called me")
    assert "display:inline-block" in style_of("figure", "calm-corner")  # classic gallery
    assert "display:inline-block" in style_of("figure", "session-2")  # block gallery
    assert "overflow-wrap:break-word" in style_of("div", "Two hundred families")
    style = re.search(r"<style>(.*?)</style>", full.html, re.S)
    assert style is not None and "@media (prefers-color-scheme: dark)" in style.group(1)
    assert ".content pre { background-color: #12161b !important;" in style.group(1)


def test_full_text_part_is_real_text(full: RenderedIssue) -> None:
    text = full.text
    for piece in (
        "What we asked\n-------------",
        "- How often did it happen?\n- Who told you, and when?",
        "> Nobody called me. I found out from the bruises on his arms.\n>\n> A parent from Ohio",
        "Watch the video on YouTube: AASR listening session, February 2025\n"
        "<https://www.youtube.com/watch?v=Xq3bC9kLm2A>",
        "[Image: Parents and children at a table covered in survey forms]",
        "2022–23 | 61% | 38% | 22%",
        'survey = pd.read_csv("https://endseclusion.org/wp-content/uploads/2025/03/',
        "Questions? Write to research@endseclusion.org.",
        "Read on the site: https://endseclusion.org/2025/03/18/our-2025-report/",
        "A five-minute call\nmakes a difference",
    ):
        assert piece in text, piece
    assert "<" not in re.sub(r"<(?:https?://|mailto:)[^>\s]+>", "", text)  # no markup left
    assert max(len(line) for line in text.splitlines()) < 998


# -- title ----------------------------------------------------------------------------------


def test_title_shows_title_date_author_and_link_only(tmp_path: Path) -> None:
    issue = render(content_mode_settings(tmp_path, "title"))
    cells = story_cells(issue.html)
    assert len(cells) == 3
    for cell in cells:
        assert re.search(r'<h2[^>]*><a href="https://endseclusion.org/2025/03/[^"]+"', cell)
        assert re.search(r'<p class="meta"[^>]*><time datetime="2025-03-\d\d"', cell)
        assert "By " in cell
        for absent in ("<img", 'class="summary', "read-more", "<p>"):
            assert absent not in cell, absent
    assert "Two hundred families" not in issue.html and "Two hundred families" not in issue.text
    assert (
        "Our 2025 report: what families told us\n18 March 2025 · By Siobhán Ní Bhriain\n\n"
        "https://endseclusion.org/2025/03/18/our-2025-report/\n"
    ) in issue.text


# -- layout helpers -------------------------------------------------------------------------


def test_headings_keep_their_order_and_never_skip_a_level() -> None:
    assert demote_headings("<h2>a</h2><h4>b</h4><h2>c</h2>") == "<h3>a</h3><h4>b</h4><h3>c</h3>"
    assert demote_headings("<h4>x</h4>") == "<h3>x</h3>"
    assert demote_headings("<h2>1</h2><h3>2</h3><h4>3</h4><h5>4</h5><h6>5</h6>").count("<h6>") == 2


def test_image_widths_are_capped_and_heights_left_to_the_client() -> None:
    assert fit_to_column('<img src="a" alt="" width="1200" height="800">') == (
        '<img src="a" alt="" width="552">'
    )
    assert fit_to_column('<img src="a" alt="" width="300" height="200">') == (
        '<img src="a" alt="" width="300">'
    )
    assert fit_to_column('<img src="a" alt="" height="900">') == '<img src="a" alt="">'


def full_issue_of_one_story(
    tmp_path: Path, title: str, content_html: str, image_url: str, image_alt: str
) -> RenderedIssue:
    """One story with a featured image, as the web archive passes it, rendered in `full`."""
    story = PlainStory(
        title=title,
        link="https://endseclusion.org/p/",
        author=None,
        summary_html="",
        content_html=content_html,
        image_url=image_url,
        image_alt=image_alt,
        published_at=None,
    )
    return render_issue(
        [story],
        content_mode_settings(tmp_path, "full"),
        issue_id=None,
        feed_title="",
        feed_link=None,
    )


def test_full_with_a_story_image_not_in_the_post_still_shows_it(tmp_path: Path) -> None:
    issue = full_issue_of_one_story(
        tmp_path, "Pictured", "<p>Body.</p>", "https://endseclusion.org/featured.jpg", "Featured"
    )
    assert re.search(r'<img class="story-image" src="https://endseclusion.org/featured.jpg"',
                     issue.html)  # fmt: skip


def test_full_knows_a_featured_image_in_another_wordpress_size(tmp_path: Path) -> None:
    issue = full_issue_of_one_story(
        tmp_path,
        "Sized",
        '<p><img src="https://endseclusion.org/up/room-1024x683.jpg" alt="Room"></p>',
        "https://endseclusion.org/up/room-scaled.jpg",
        "Room",
    )
    assert 'class="story-image"' not in issue.html
    assert issue.html.count("<img") == 1
