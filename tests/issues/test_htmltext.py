"""The plain-text part and excerpts: html_to_text (paragraphs, links, entities, lists, headings,
quotes, images, wrapping) and excerpt_html's cuts on element boundaries."""

from __future__ import annotations

from newsletter.issues.htmltext import cap_line_length, excerpt_html, html_to_text


def test_html_to_text_paragraphs_links_and_entities() -> None:
    text = html_to_text(
        "<p>Tom &amp; Jerry&nbsp;said &ldquo;hi&rdquo;.</p><p>See <a href='https://a.org/x'>our"
        " page</a> or <a href='https://a.org/'>https://a.org</a> or <a href='#top'>top</a>.</p>"
    )
    assert text == (
        "Tom & Jerry said “hi”.\n\nSee our page <https://a.org/x> or https://a.org/ or top."
    )


def test_html_to_text_lists_headings_quotes_images() -> None:
    text = html_to_text(
        "<h3>Key points</h3><ul><li>One</li><li>Two<ol><li>Sub</li></ol></li></ul>"
        "<blockquote><p>Quoted.</p><p>Again.</p></blockquote>"
        "<p>Fist <img src='x.png' alt='✊'> <img src='y.png'> up<br>next line</p>"
        "<script>alert(1)</script><style>p{}</style>"
    )
    assert text == (
        "Key points\n----------\n\n- One\n- Two\n  1. Sub\n\n> Quoted.\n>\n> Again.\n\n"
        "Fist ✊ up\nnext line"
    )


def test_html_to_text_wraps_without_breaking_urls() -> None:
    url = "https://endseclusion.org/" + "a" * 90
    text = html_to_text("<p>" + "word " * 40 + f"<a href='{url}'>link</a></p>")
    lines = text.splitlines()
    assert all(len(line) <= 72 for line in lines if url not in line)
    assert any(line.endswith(f"<{url}>") for line in lines)
    assert "<" not in html_to_text("<div><b>bold</b> <i>it</i></div>")
    assert cap_line_length("x" * 2000).splitlines() == ["x" * 900, "x" * 900, "x" * 200]


def test_excerpt_cuts_on_element_boundaries() -> None:
    html = "<div><figure><img src='a'></figure><p>One.</p><p>Two <b>b</b>.</p><p>Three.</p></div>"
    assert excerpt_html(html) == "<p>One.</p><p>Two <b>b</b>.</p>"
    long_paragraph = "<p>" + "word " * 400 + "</p>"
    cut = excerpt_html(long_paragraph)
    assert cut.startswith("<p>word word") and cut.endswith("word…</p>")
    assert len(cut) < 700
    assert excerpt_html("<p>a &amp; b &lt;c&gt;</p>") == "<p>a &amp; b &lt;c&gt;</p>"
