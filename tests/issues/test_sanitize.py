"""Feed text and HTML are untrusted: what `newsletter.issues.sanitize` lets through."""

from __future__ import annotations

import pytest

from newsletter.issues.sanitize import (
    clean_html,
    clean_text,
    display_url,
    first_content_image,
    is_gravatar,
    normalize_link,
    plain_id,
    safe_url,
)

# ---- clean_text: titles, authors, anything that may reach a header ----------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("AT&amp;T", "AT&T"),  # unescaped once ...
        ("AT&amp;amp;T", "AT&amp;T"),  # ... and only once
        ("It&rsquo;s here", "It\u2019s here"),  # named entity left encoded in CDATA
        ("Tom &amp; Jerry &#8211; live", "Tom & Jerry \u2013 live"),
        ("Why <b>bold</b> <i>matters</i>", "Why bold matters"),
        ("<script>alert(1)</script>Hello", "Hello"),
        ("Hearts &lt;3 and a &lt; b", "Hearts <3 and a < b"),
        ("Healing Through Relational Safety \u00c2", "Healing Through Relational Safety"),
        ("Relational Safety \u00c2\u00a0", "Relational Safety"),
        ("students\u00e2\u20ac\u2122 success", "students\u2019 success"),
        ("students\u00e2\x80\x99 success", "students\u2019 success"),  # latin1 flavour
        ("Caf\u00c3\u00a9 au lait", "Caf\u00e9 au lait"),
        ("\u00c2ngela \u00c2 and Ren\u00c3\u00a9e", "\u00c2ngela and Ren\u00e9e"),
        ("  lots   of\tspace  ", "lots of space"),
        ("", ""),
    ],
)
def test_clean_text(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


@pytest.mark.parametrize(
    "breaker",
    ["\r", "\n", "\r\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\t", "\x00", "\x1b", "\x7f"],
)
def test_clean_text_leaves_no_line_break_or_control_character(breaker: str) -> None:
    cleaned = clean_text(f"Subject{breaker}Bcc: victim@example.com")
    assert cleaned == "Subject Bcc: victim@example.com"
    assert cleaned.splitlines() == [cleaned]


def test_clean_text_leaves_no_c1_control_character() -> None:
    # a lone C1 control is read as the cp1252 character it was meant to be
    assert all(not 0x80 <= ord(ch) <= 0x9F for ch in clean_text("a\x80b\x9fc\x8dd"))


def test_clean_text_drops_bidi_overrides() -> None:
    assert clean_text("invoice\u202egpj.exe") == "invoicegpj.exe"


def test_clean_text_keeps_emoji_sequences() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_text(f"Families {family} \U0001f64f") == f"Families {family} \U0001f64f"


def test_clean_text_caps_length_with_an_ellipsis_at_a_word() -> None:
    cleaned = clean_text("word " * 100, max_length=50)
    assert len(cleaned) <= 50
    assert cleaned.endswith("word\u2026")
    assert clean_text("x" * 400, max_length=300) == "x" * 299 + "\u2026"
    assert clean_text("short", max_length=300) == "short"


# ---- clean_html: sanitising ----------------------------------------------------


def test_clean_html_removes_scripts_handlers_and_dangerous_urls() -> None:
    dirty = (
        '<p onclick="steal()" style="color:red">Hi<script>alert(1)</script></p>'
        '<img src="https://ex.org/a.png" onerror="alert(2)">'
        '<a href="javascript:alert(3)">j</a><a href=" JaVaScRiPt:alert(4)">k</a>'
        '<a href="java&#10;script:alert(5)">l</a><a href="data:text/html,x">d</a>'
        '<a href="vbscript:x">v</a><svg onload="alert(6)"><circle/></svg>'
        "<style>p{display:none}</style><form><input name=pw></form>"
        '<object data="x.swf">o</object><embed src="x.swf">'
    )
    cleaned = clean_html(dirty, "https://ex.org/")
    for bad in ("script", "onclick", "onerror", "onload", "javascript", "data:", "vbscript",
                "style", "<svg", "<form", "<input", "<object", "<embed", "alert"):  # fmt: skip
        assert bad not in cleaned.lower(), bad
    assert "<p>Hi</p>" in cleaned
    assert '<img alt="" src="https://ex.org/a.png">' in cleaned


def test_clean_html_keeps_the_allowed_structure() -> None:
    rich = (
        "<h2>Head</h2><h3>Sub</h3><p><strong>s</strong> <em>e</em> <b>b</b> <i>i</i>"
        "<br><code>c</code></p><ul><li>one</li></ul><ol><li>two</li></ol>"
        "<blockquote><p>q</p></blockquote><pre>p</pre><hr>"
        "<figure><img src='https://ex.org/f.jpg' alt='F'><figcaption>Cap</figcaption></figure>"
        "<table><thead><tr><th>H</th></tr></thead><tbody><tr><td colspan='2'>D</td></tr></tbody>"
        "</table>"
    )
    cleaned = clean_html(rich)
    for tag in ("<h2>", "<h3>", "<strong>", "<em>", "<b>", "<i>", "<br>", "<code>", "<ul>",
                "<ol>", "<li>", "<blockquote>", "<pre>", "<hr>", "<figure>", "<figcaption>",
                "<table>", "<thead>", "<th>", "<td colspan=\"2\">"):  # fmt: skip
        assert tag in cleaned, tag


def test_clean_html_demotes_h1_and_flattens_layout_tags() -> None:
    cleaned = clean_html('<div class="x"><h1>Title</h1><section><h5>small</h5></section></div>')
    assert cleaned == "<h2>Title</h2><h4>small</h4>"


def test_clean_html_drops_wordpress_image_attributes_but_keeps_alt_and_numeric_size() -> None:
    cleaned = clean_html(
        '<img loading="lazy" decoding="async" width="1024" height="auto" '
        'src="https://ex.org/p.jpg" alt="A photo" class="wp-image-1" '
        'srcset="https://ex.org/p-300.jpg 300w" sizes="100vw">'
    )
    assert cleaned == '<img width="1024" alt="A photo" src="https://ex.org/p.jpg">'


def test_clean_html_adds_empty_alt_and_drops_images_without_a_usable_src() -> None:
    assert (
        clean_html('<img src="https://ex.org/p.jpg">') == '<img alt="" src="https://ex.org/p.jpg">'
    )
    assert clean_html('<p>x<img src="data:image/png;base64,AAAA" alt="d"></p>') == "<p>x</p>"


def test_clean_html_makes_relative_urls_absolute() -> None:
    cleaned = clean_html(
        '<a href="/about/">A</a><a href="../up">U</a><a href="#top">T</a>'
        '<img src="pic.jpg" alt="p"><a href="//cdn.ex.org/x">P</a><a href="mailto:a@ex.org">M</a>',
        "https://ex.org/blog/post/",
    )
    assert '<a href="https://ex.org/about/">A</a>' in cleaned
    assert '<a href="https://ex.org/blog/up">U</a>' in cleaned
    assert '<a href="https://ex.org/blog/post/#top">T</a>' in cleaned
    assert '<img src="https://ex.org/blog/post/pic.jpg" alt="p">' in cleaned
    assert '<a href="https://cdn.ex.org/x">P</a>' in cleaned
    assert '<a href="mailto:a@ex.org">M</a>' in cleaned


def test_clean_html_a_hostile_base_url_cannot_smuggle_a_scheme() -> None:
    cleaned = clean_html('<a href="x">x</a>', "javascript:alert(1)//")
    assert "javascript" not in cleaned


def test_clean_html_turns_iframes_into_links() -> None:
    cleaned = clean_html(
        '<p><iframe title="Board &amp; meeting" src="https://www.youtube.com/embed/abc123XYZ'
        '?feature=oembed" allowfullscreen></iframe></p>'
        '<iframe src="https://player.vimeo.com/video/42"></iframe>'
        "<iframe>no source</iframe>"
    )
    assert "<iframe" not in cleaned
    assert (
        '<p><a href="https://www.youtube.com/watch?v=abc123XYZ">'
        "Watch the video on YouTube: Board &amp; meeting</a></p>"
    ) in cleaned
    assert '<p><a href="https://vimeo.com/42">Watch the video on Vimeo</a></p>' in cleaned
    assert "no source" not in cleaned
    assert "<p><p>" not in cleaned and "<p></p>" not in cleaned


def test_clean_html_other_embeds_become_a_paragraph_naming_their_site() -> None:
    cleaned = clean_html(
        '<figure class="wp-block-embed"><div class="wp-block-embed__wrapper">'
        '<iframe title="Our office" src="//maps.example.com/embed?q=1"></iframe></div>'
        "<figcaption>Where we are</figcaption></figure>"
        '<iframe src="/embed/form"></iframe>',
        "https://endseclusion.org/post/",
    )
    assert cleaned == (
        '<figure><p><a href="https://maps.example.com/embed?q=1">'
        "View the embedded content on maps.example.com: Our office</a></p>"
        "<figcaption>Where we are</figcaption></figure>"
        '<p><a href="https://endseclusion.org/embed/form">View the embedded content</a></p>'
    )


def test_clean_html_embeds_never_get_a_made_up_thumbnail() -> None:
    cleaned = clean_html('<iframe src="https://www.youtube.com/embed/abc123XYZ"></iframe>')
    assert "<img" not in cleaned and "ytimg" not in cleaned and "img.youtube" not in cleaned


def test_clean_html_video_and_audio_become_links_with_the_feeds_own_poster() -> None:
    cleaned = clean_html(
        '<figure class="wp-block-video"><video controls poster="/still.jpg" '
        'src="/clip.mp4" onplay="x()"></video></figure>'
        '<audio controls><source src="/talk.mp3" type="audio/mpeg">old browser</audio>'
        '<video><source src="javascript:alert(1)"></video>',
        "https://endseclusion.org/post/",
    )
    assert cleaned == (
        '<figure><p><a href="https://endseclusion.org/clip.mp4"><img '
        'src="https://endseclusion.org/still.jpg" alt="Watch the video"></a><br>'
        '<a href="https://endseclusion.org/clip.mp4">Watch the video</a></p></figure>'
        '<p><a href="https://endseclusion.org/talk.mp3">Listen to the recording</a></p>'
    )


def test_clean_html_classic_captions_become_figures() -> None:
    cleaned = clean_html(
        '<div id="attachment_7" style="width: 310px" class="wp-caption aligncenter">'
        '<a href="https://e.org/big.jpg"><img src="https://e.org/small.jpg" alt="Pupils" '
        'width="300" height="200"></a><p id="caption-7" class="wp-caption-text">A class '
        "<em>outside</em></p></div><p>After.</p>"
    )
    assert cleaned == (
        '<figure><a href="https://e.org/big.jpg"><img src="https://e.org/small.jpg" '
        'alt="Pupils" width="300" height="200"></a><figcaption>A class <em>outside</em>'
        "</figcaption></figure><p>After.</p>"
    )


def test_clean_html_iframe_with_javascript_src_leaves_nothing_clickable() -> None:
    assert clean_html('<iframe src="javascript:alert(1)"></iframe>ok') == "ok"


# ---- clean_html: WordPress cruft ---------------------------------------------


def test_clean_html_removes_the_excerpt_more_marker_only_at_the_end() -> None:
    assert clean_html("A short excerpt [&#8230;]") == "A short excerpt"
    assert clean_html("<p>A short excerpt [\u2026]</p>") == "<p>A short excerpt</p>"
    assert clean_html("<p>Quoted [...] elision stays.</p>") == "<p>Quoted [...] elision stays.</p>"


def test_clean_html_removes_continue_reading() -> None:
    screen_reader = (
        "Tell your senators. Continue reading "
        '<span class="screen-reader-text">Tell Nebraska Senators</span>'
    )
    assert clean_html(screen_reader) == "Tell your senators."
    more_link = (
        '<p>First.</p><p><a href="https://ex.org/p/#more-1" class="more-link">Continue reading '
        '<span class="meta-nav">&rarr;</span></a></p>'
    )
    assert clean_html(more_link) == "<p>First.</p>"
    assert clean_html("<p>Body. Continue reading \u2192</p>") == "<p>Body.</p>"
    prose = "<p>Continue reading to the end, please.</p>"
    assert clean_html(prose) == prose


def test_clean_html_removes_the_yoast_footer() -> None:
    cleaned = clean_html(
        '<p>Body.</p>\n<p>The post <a href="https://ex.org/p/">Post</a> appeared first on '
        '<a href="https://ex.org">Site</a>.</p>'
    )
    assert cleaned == "<p>Body.</p>"


def test_clean_html_turns_wp_smileys_back_into_emoji() -> None:
    cleaned = clean_html(
        '<p>Thanks <img src="https://s.w.org/images/core/emoji/15.0.3/72x72/1f64f.png" '
        'alt="&#x1f64f;" class="wp-smiley" style="height: 1em; max-height: 1em;" /></p>'
    )
    assert cleaned == "<p>Thanks \U0001f64f</p>"


def test_clean_html_repairs_mojibake() -> None:
    assert clean_html("<p>Students\u00e2\u20ac\u2122 caf\u00c3\u00a9</p>") == (
        "<p>Students\u2019 caf\u00e9</p>"
    )
    assert clean_html("<p>Safety \u00c2</p>") == "<p>Safety</p>"


def test_clean_html_of_nothing_is_empty() -> None:
    assert clean_html("") == ""
    assert clean_html("   ") == ""
    assert clean_html("<script>only()</script>") == ""


# ---- URLs and images -----------------------------------------------------------


def test_safe_url() -> None:
    assert safe_url("/p", "https://ex.org/a/") == "https://ex.org/p"
    assert safe_url("https://ex.org/p") == "https://ex.org/p"
    assert safe_url("javascript:alert(1)") is None
    assert safe_url("java\tscript:alert(1)") is None
    assert safe_url("ftp://ex.org/f") is None
    assert safe_url("relative") is None
    assert safe_url("relative", allow_relative=True) == "relative"
    assert safe_url("") is None


def test_normalize_link_makes_scheme_and_slash_variants_equal() -> None:
    variants = [
        "http://Example.ORG/2024/01/post/",
        "https://example.org/2024/01/post",
        "https://example.org:443/2024/01/post/#comments",
        "http://example.org:80/2024/01/post",
    ]
    assert {normalize_link(v) for v in variants} == {"example.org/2024/01/post"}
    assert normalize_link("https://example.org/?p=12") == "example.org?p=12"
    assert normalize_link("https://example.org:8080/x/") == "example.org:8080/x"


def test_is_gravatar() -> None:
    assert is_gravatar("https://secure.gravatar.com/avatar/abc?s=96")
    assert is_gravatar("http://0.gravatar.com/avatar/abc")
    assert is_gravatar("https://gravatar.com/avatar/abc")
    assert not is_gravatar("https://notgravatar.com/avatar/abc")
    assert not is_gravatar("https://ex.org/gravatar.com.jpg")
    assert not is_gravatar(None)


def test_first_content_image_skips_avatars_emoji_and_pixels() -> None:
    content = (
        '<img src="https://secure.gravatar.com/avatar/x" alt="me">'
        '<img src="https://s.w.org/images/core/emoji/15/svg/1f44f.svg" alt="e">'
        '<img src="https://tracker.example/p.gif" width="1" height="1" alt="">'
        '<img src="https://ex.org/real.jpg" alt="A &amp; B">'
    )
    assert first_content_image(content) == ("https://ex.org/real.jpg", "A & B")
    assert first_content_image('<img src="https://ex.org/x.jpg" alt="">') == (
        "https://ex.org/x.jpg",
        None,
    )
    assert first_content_image("<p>no image</p>") == (None, None)


def test_display_url_hides_credentials() -> None:
    assert display_url("https://user:secret@ex.org:8443/feed") == "https://ex.org:8443/feed"
    assert display_url("https://ex.org/feed") == "https://ex.org/feed"


def test_plain_id_keeps_identifiers_verbatim_but_single_line() -> None:
    assert plain_id("  https://ex.org/?p=1 \n") == "https://ex.org/?p=1"
    assert plain_id("a&amp;b <c>") == "a&amp;b <c>"
    assert plain_id("   ") is None
    assert plain_id(None) is None
