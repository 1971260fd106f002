"""What `newsletter send` tells staff about an issue it had to shorten (Gmail's clipping size)."""

from __future__ import annotations

from pathlib import Path

from tests.support.helpers import BASE_ENV, add_subscribers, database_url, many, site_database
from tests.support.helpers import run_cli as run

PARAGRAPH = (
    "<p>Paragraph {n}: the district's own records show restraint used again and again, "
    "in rooms without windows, on children as young as five. </p>"
)


def long_post_feed(paragraphs: int) -> str:
    body = "<h2>Findings</h2>" + "".join(PARAGRAPH.format(n=n) for n in range(paragraphs))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">
<channel><title>AASR</title><link>https://endseclusion.org/</link><description>x</description>
<item><title>A very long report</title><link>https://endseclusion.org/2025/long-report/</link>
<guid>https://endseclusion.org/?p=1</guid><pubDate>Mon, 03 Mar 2025 10:00:00 +0000</pubDate>
<description>A summary.</description><content:encoded><![CDATA[{body}]]></content:encoded></item>
</channel></rss>"""


def test_a_story_cut_to_fit_is_named_in_the_output(tmp_path: Path) -> None:
    (tmp_path / "feed.xml").write_text(long_post_feed(1500), encoding="utf-8")
    lines = [f'{k}="{v}"' for k, v in BASE_ENV.items()]
    lines += ["NEWSLETTER_FEED_URL=feed.xml", "NEWSLETTER_OUTBOX=outbox"]
    lines += ["NEWSLETTER_STORY_CONTENT=full", f"NEWSLETTER_DATABASE_URL={database_url(tmp_path)}"]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    with site_database(tmp_path) as engine:
        add_subscribers(engine, many(2))

    preview = run(tmp_path, "send", "--preview", "preview.html")
    assert preview.returncode == 0, preview.stderr
    assert "Continue reading on the site" in (tmp_path / "preview.html").read_text()

    result = run(tmp_path, "send")
    assert result.returncode == 0, result.stderr
    assert '"A very long report" alone passes Gmail' in result.stdout
    assert "cut at a paragraph boundary" in result.stdout
