"""Fetching and parsing real feed files and a real local HTTP server (no mocks)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.errors import FeedError
from newsletter.issues.feed import (
    MAX_UID_LENGTH,
    Feed,
    FeedStory,
    load_feed,
    parse_feed,
)
from newsletter.issues.fetch import fetch_feed
from tests.support.helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
FEEDS = Path(__file__).resolve().parents[1] / "data" / "feeds"
SAMPLE = ROOT / "examples" / "aasr-feed.xml"
SAMPLE_NEXT = ROOT / "examples" / "aasr-feed-next.xml"


def feed(name: str) -> Feed:
    return load_feed(str(FEEDS / name))


def story(parsed: Feed, title_start: str) -> FeedStory:
    return next(s for s in parsed.stories if s.title.startswith(title_start))


# ---- the bundled AASR sample (a real WordPress feed) -------------------------


def test_sample_feed_facts() -> None:
    parsed = load_feed(str(SAMPLE))
    assert parsed.title == "Alliance Against Seclusion and Restraint"
    assert parsed.link == "https://endseclusion.org"
    assert len(parsed.stories) == 10
    first = parsed.stories[0]
    assert first.title == "Supporting Youth in Residential Care: Healing Through Relational Safety"
    assert first.uid == "guid:https://endseclusion.org/?p=4127"
    assert first.guid == "https://endseclusion.org/?p=4127"
    assert first.link == (
        "https://endseclusion.org/2024/03/18/"
        "supporting-youth-in-residential-care-healing-through-relational-safety/"
    )
    assert first.author == "Guest Author"
    assert first.published_at == datetime(2024, 3, 18, 14, 0, tzinfo=UTC)
    assert first.image_url == (
        "https://endseclusion.org/wp-content/uploads/2024/03/relational-safety-1024x683.jpg"
    )
    assert first.image_alt == "Two adults sitting with a teenager at a table"
    assert "srcset" not in first.content_html and "loading=" not in first.content_html
    assert parsed.stories[-1].title == "Maryland use of restraint and seclusion increasing"


def test_sample_feed_is_clean_everywhere() -> None:
    parsed = load_feed(str(SAMPLE))
    dates = [s.published_at for s in parsed.stories]
    assert dates == sorted(dates, reverse=True)  # type: ignore[type-var]
    assert len({s.uid for s in parsed.stories}) == 10
    for s in parsed.stories:
        assert "\u00c2" not in s.title and "\u00e2\u20ac" not in s.title
        for text in (s.title, s.summary_html, s.content_html):
            assert "[\u2026]" not in text and "[&#8230;]" not in text
            assert "&rsquo;" not in text and "&#8217;" not in text
            assert "Continue reading" not in text
            assert "appeared first on" not in text
            assert "gravatar" not in text
            assert "<iframe" not in text and "wp-smiley" not in text
        assert s.image_url is None or "gravatar" not in s.image_url
        assert s.published_at is not None and s.published_at.tzinfo is not None
    harwood = story(parsed, "Harwood Union")
    assert "\U0001f64f" in harwood.content_html and "\U0001f44f" in harwood.content_html
    assert '<a href="https://www.youtube.com/watch?v=abc123XYZ">' in harwood.content_html
    assert harwood.image_url is None  # only a Gravatar and an emoji: no story image
    rewards = story(parsed, "The Dark Side of Rewards")
    assert "students\u2019 long-term success" in rewards.summary_html
    assert story(parsed, "The Keeping All Students Safe Act").title.endswith(
        "Now it\u2019s time to get it passed"
    )
    nebraska = story(parsed, "Tell Nebraska")
    assert nebraska.summary_html.endswith("Tell your senators to \u2018just say no\u2019.")


def test_sample_next_feed_shares_identities_with_the_first() -> None:
    before = {s.uid for s in load_feed(str(SAMPLE)).stories}
    after = load_feed(str(SAMPLE_NEXT))
    assert len(after.stories) == 10
    assert [s.uid in before for s in after.stories[:3]] == [False, False, True]
    assert after.stories[1].title == "New research on restraint & students with disabilities"


# ---- WordPress quirks ------------------------------------------------------------


def test_wordpress_quirks() -> None:
    parsed = feed("wordpress-quirks.xml")
    assert parsed.title == "Quirky \u2013 Site"
    yoast = story(parsed, "It\u2019s time")
    assert yoast.title == "It\u2019s time \u2013 AT&T & friends"
    assert yoast.author == "Jane & John"
    assert yoast.content_html == "<p>Body of the Yoast post.</p>"
    assert yoast.summary_html == "A short excerpt that WordPress cut off"
    assert yoast.image_url is None  # the Gravatar in media:content is not a story image

    more = story(parsed, "Continue reading quirk")
    assert more.summary_html == "Tell your senators."
    assert "Continue reading" not in more.content_html and "more-link" not in more.content_html
    assert "Thank you \U0001f44f \U0001f64f" in more.content_html
    assert more.image_url == "https://quirks.example.org/wp-content/uploads/photo.jpg"
    assert more.image_alt == "A real photo"

    mojibake = story(parsed, "Mojibake")
    assert mojibake.title == "Mojibake in the database"
    assert mojibake.author == "Ren\u00e9e"
    assert "Students\u2019 success at the caf\u00e9." in mojibake.content_html
    assert mojibake.image_url == "https://quirks.example.org/wp-content/uploads/featured.jpg"
    assert mojibake.image_alt is None


# ---- hostile input -----------------------------------------------------------------


def test_hostile_feed_is_neutralised() -> None:
    parsed = feed("hostile.xml")
    assert parsed.title == "Hostile Bcc: victim@example.com"
    (hostile,) = parsed.stories
    for breaker in ("\r", "\n", "\u2028", "\x85", "\t"):
        assert breaker not in hostile.title
    assert hostile.title.startswith("Subject Bcc: everyone@example.com line")
    html = hostile.content_html
    for bad in ("<script", "onclick", "onerror", "onload", "javascript", "data:", "<iframe",
                "<style", "<form", "<input", "<object", "<svg", "alert", "steal"):  # fmt: skip
        assert bad not in html.lower(), bad
    assert hostile.link == "https://hostile.example.org/blog/2024/01/relative-post/"
    base = "https://hostile.example.org/blog/2024/01/"
    assert f'<img src="{base}relative-post/pics/cat.jpg" alt="Cat" width="640">' in html
    assert f'<a href="{base}about/">About us</a>' in html
    assert '<a href="mailto:hello@hostile.example.org">Mail</a>' in html
    assert (
        '<a href="https://www.youtube.com/watch?v=dQw4w9WgXcQ">'
        "Watch the video on YouTube: Our video</a>"
    ) in html
    assert '<a href="https://player.example.com/embed/77">' in html
    assert "<h2>Big heading</h2>" in html
    assert hostile.image_url == f"{base}relative-post/pics/cat.jpg"
    assert hostile.image_alt == "Cat"


def test_hostile_urls_never_become_links() -> None:
    data = b"""<rss version="2.0"><channel><title>t</title><link>javascript:alert(1)</link>
    <item><title>x</title><link>javascript:alert(2)</link><guid>g</guid>
    <description>&lt;a href="rel"&gt;r&lt;/a&gt;</description></item></channel></rss>"""
    parsed = parse_feed(data)
    assert parsed.link is None
    assert parsed.stories[0].link is None
    assert "javascript" not in parsed.stories[0].content_html


# ---- identity -------------------------------------------------------------------------


def test_identity_without_guid() -> None:
    first = feed("no-guid-http.xml")
    linked, by_post_id, anonymous = first.stories
    assert linked.uid == "link:noguid.example.org/2024/01/linked-story"
    assert linked.guid is None
    assert by_post_id.uid == "post:42"
    assert by_post_id.link is None
    assert re.fullmatch(r"hash:[0-9a-f]{64}", anonymous.uid)
    assert anonymous.published_at is None  # undated: after the dated ones
    # the site moved to https and the link lost its trailing slash: same story
    moved = feed("no-guid-https.xml")
    assert moved.stories[0].uid == linked.uid
    assert moved.stories[0].link == "https://noguid.example.org/2024/01/linked-story#comments"
    # the hash is stable across runs
    assert feed("no-guid-http.xml").stories[2].uid == anonymous.uid


def test_a_guid_that_is_not_a_url_is_not_a_link() -> None:
    data = b"""<rss version="2.0"><channel><title>t</title><link>https://ex.org/</link>
    <item><title>x</title><guid>tag-123</guid></item></channel></rss>"""
    (only,) = parse_feed(data).stories
    assert only.uid == "guid:tag-123"
    assert only.link is None


def test_long_identities_are_hashed_to_fit() -> None:
    long_guid = "g" * 3000
    data = f"""<rss version="2.0"><channel><title>t</title>
    <item><title>x</title><guid>{long_guid}</guid></item></channel></rss>""".encode()
    (only,) = parse_feed(data).stories
    assert len(only.uid) <= MAX_UID_LENGTH
    assert re.fullmatch(r"guid:sha256:[0-9a-f]{64}", only.uid)
    assert only.guid is not None and len(only.guid) <= 1000


def test_repeated_items_appear_once_and_order_is_newest_first() -> None:
    data = b"""<rss version="2.0"><channel><title>t</title>
    <item><title>old</title><guid>a</guid><pubDate>Mon, 01 Jan 2024 10:00:00 +0000</pubDate></item>
    <item><title>undated</title><guid>u</guid></item>
    <item><title>new</title><guid>b</guid><pubDate>Tue, 02 Jan 2024 10:00:00 +0200</pubDate></item>
    <item><title>same time</title><guid>c</guid>
      <pubDate>Tue, 02 Jan 2024 08:00:00 GMT</pubDate></item>
    <item><title>old again</title><guid>a</guid>
      <pubDate>Mon, 01 Jan 2024 10:00:00 +0000</pubDate></item>
    </channel></rss>"""
    parsed = parse_feed(data)
    assert [s.title for s in parsed.stories] == ["new", "same time", "old", "undated"]
    assert parsed.stories[0].published_at == datetime(2024, 1, 2, 8, 0, tzinfo=UTC)


# ---- other formats and empty feeds ---------------------------------------------------


def test_atom_feed() -> None:
    parsed = feed("atom.xml")
    assert parsed.title == "Atom & Co"
    assert parsed.link == "https://atom.example.org/"
    newer, older = parsed.stories
    assert newer.title == "Newer entry"
    assert newer.uid == "guid:urn:uuid:newer"
    assert newer.link == "https://atom.example.org/blog/newer/"
    assert newer.published_at == datetime(2024, 2, 1, 7, 30, tzinfo=UTC)
    assert newer.author == "Ann Atom"
    assert newer.image_url == "https://atom.example.org/blog/img/atom.png"
    assert newer.image_alt == "Atom picture"
    assert older.content_html == "An older summary."


def test_rdf_feed() -> None:
    parsed = feed("rdf.xml")
    assert parsed.title == "RDF Site"
    (only,) = parsed.stories
    assert only.title == "First RDF item"
    assert only.uid == "guid:https://rdf.example.org/one"
    assert only.author == "Rita"
    assert only.published_at == datetime(2024, 3, 4, 4, 6, 7, tzinfo=UTC)
    assert only.content_html == "One &amp; only."


def test_empty_channel_is_not_an_error() -> None:
    parsed = feed("empty-channel.xml")
    assert parsed.title == "Nothing yet"
    assert parsed.stories == []


# ---- bad input: one clear line each ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("broken.xml", "not a valid feed"),
        ("challenge.html", "returned an HTML page, not a feed"),
        ("empty.xml", "is empty"),
        ("garbage.bin", "not a valid feed"),
    ],
)
def test_bad_feed_files(name: str, needle: str) -> None:
    with pytest.raises(FeedError) as error:
        feed(name)
    assert_one_line_error(error, needle, name)


def test_a_cut_short_feed_is_refused_even_with_items() -> None:
    # a partial download: the lenient parser still finds items, the last one cut
    with pytest.raises(FeedError) as error:
        feed("truncated.xml")
    assert_one_line_error(error, "cut short", "truncated.xml")


def test_small_well_formedness_slips_are_tolerated() -> None:
    data = b"""<rss version="2.0"><channel><title>x</title>
    <item><title>Tom & Jerry</title><guid>1</guid></item></channel></rss>
    <!-- a plugin's PHP warning after the feed --> Warning: junk"""
    assert [s.title for s in parse_feed(data).stories] == ["Tom & Jerry"]


def test_xml_that_is_not_a_feed() -> None:
    with pytest.raises(FeedError) as error:
        parse_feed(b'<?xml version="1.0"?><note><to>x</to></note>')
    assert_one_line_error(error, "not an RSS or Atom feed")


def test_parse_feed_never_opens_a_file_named_by_the_data(tmp_path: Path) -> None:
    secret = tmp_path / "secret.xml"
    secret.write_bytes((FEEDS / "rdf.xml").read_bytes())
    with pytest.raises(FeedError):
        parse_feed(str(secret).encode())


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FeedError) as error:
        load_feed(str(tmp_path / "nope.xml"))
    assert_one_line_error(error, "not found", "nope.xml")
    with pytest.raises(FeedError) as error:
        load_feed(str(tmp_path))
    assert_one_line_error(error, "is a directory")


def test_file_url_and_path_are_read(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(SAMPLE.read_bytes())
    assert fetch_feed(path.as_uri()).data == SAMPLE.read_bytes()
    result = fetch_feed(str(path))
    assert result.data == SAMPLE.read_bytes() and result.url == str(path)
    assert len(load_feed(path.as_uri()).stories) == 10


def test_unsupported_scheme() -> None:
    with pytest.raises(FeedError) as error:
        fetch_feed("ftp://example.org/feed")
    assert_one_line_error(error, "unsupported")
