"""Properties of the HTML sanitiser: whatever HTML a feed holds, nothing active comes out.

Hypothesis builds hostile HTML from fragments that real attacks use: mixed-case
tags, entities and control characters inside URL schemes, broken and nested
tags, comments, CDATA, svg and math (foreign content), and every quoting style.
The output is then read the way a browser reads it (html.parser unescapes
attributes; URLs lose tabs/newlines and edge control characters before the
scheme is read) and must hold no script, iframe, event handler attribute, nor
a javascript:, vbscript: or data: URL (data: is tolerated only in an img src).
Bounded so the file runs in seconds.
"""

from __future__ import annotations

import html.parser
import re
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.issues.sanitize import ALLOWED_TAGS, clean_html, clean_text

# ---- what counts as active content in the output ---------------------------------

_URL_ATTRIBUTES = {
    "href", "src", "cite", "action", "formaction", "xlink:href", "srcset", "background",
    "poster", "data", "codebase", "dynsrc", "lowsrc", "longdesc", "usemap", "ping", "manifest",
}  # fmt: skip
_FORBIDDEN_TAGS = {
    "script", "iframe", "frame", "frameset", "object", "embed", "applet", "style", "svg",
    "math", "base", "meta", "link", "form", "input", "button", "textarea", "template",
    "noscript", "xmp", "plaintext", "noembed", "noframes", "animate", "set", "use", "foreignobject",
}  # fmt: skip
_DANGEROUS_SCHEMES = ("javascript:", "vbscript:", "data:", "livescript:")


def _as_browser_sees_url(value: str) -> str:
    """WHATWG URL parsing: strip C0 controls and spaces at the edges, drop tabs/newlines."""
    value = value.strip("".join(chr(c) for c in range(0x21)))
    return re.sub(r"[\t\n\r]", "", value).lower()


class _Audit(html.parser.HTMLParser):
    """Every problem a browser-like read of the sanitised output finds."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FORBIDDEN_TAGS or tag not in ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"event handler {name}= on <{tag}>")
            if name == "style":
                self.problems.append(f"style= on <{tag}>")
            if name in _URL_ATTRIBUTES and value is not None:
                url = _as_browser_sees_url(value)
                if url.startswith(_DANGEROUS_SCHEMES):
                    if tag == "img" and name == "src" and url.startswith("data:image/"):
                        continue
                    self.problems.append(f"{name}={value!r} on <{tag}>")

    handle_startendtag = handle_starttag


def problems(output: str) -> list[str]:
    audit = _Audit()
    audit.feed(output)
    audit.close()
    lowered = output.lower()
    for marker in ("<script", "<iframe", "<svg", "<math", "<object", "<embed", "<style"):
        if marker in lowered:
            audit.problems.append(f"raw {marker}")
    return audit.problems


# ---- hostile HTML built from fragments -------------------------------------------


def _mixed_case(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda flips: "".join(c.upper() if f else c for c, f in zip(word, flips, strict=True))
    )


_TAG_NAMES = st.sampled_from(
    [
        "script", "iframe", "svg", "math", "img", "a", "object", "embed", "style", "form",
        "input", "body", "details", "video", "audio", "source", "link", "meta", "base", "p",
        "div", "table", "td", "template", "noscript", "xmp", "plaintext", "textarea", "title",
        "select", "option", "animate", "set", "use", "foreignObject", "mtext", "mglyph",
        "annotation-xml", "image", "frame", "frameset", "isindex", "blockquote", "q", "button",
    ]
).flatmap(_mixed_case)  # fmt: skip
_EVENT = st.sampled_from(["onload", "onerror", "onclick", "onmouseover", "onfocus", "onbegin"])
_URL_ATTRIBUTE = st.sampled_from(sorted(_URL_ATTRIBUTES))
_PLAIN_ATTRIBUTE = st.sampled_from(["style", "class", "id", "alt", "title", "width", "rel"])

# ways to hide a character from a naive filter; all decode back to the character
_CHAR_DISGUISES = [
    lambda c: c,
    lambda c: f"&#{ord(c)};",
    lambda c: f"&#x{ord(c):x};",
    lambda c: f"&#X{ord(c):X}",
    lambda c: f"&#{ord(c):07d};",
    lambda c: {":": "&colon;", "(": "&lpar;", ")": "&rpar;"}.get(c, c),
]
_NOISE = st.sampled_from(["", "", "", "\t", "\n", "\r", "\x00", "\x01", "&Tab;", "&NewLine;"])


@st.composite
def _disguised(draw: st.DrawFn, text: str) -> str:
    """`text` with each character maybe case-flipped, entity-encoded, or followed by noise."""
    out = []
    for original in text:
        ch = original.swapcase() if original.isalpha() and draw(st.booleans()) else original
        out.append(draw(st.sampled_from(_CHAR_DISGUISES))(ch))
        out.append(draw(_NOISE))
    return "".join(out)


_PAYLOADS = st.sampled_from(
    [
        "javascript:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "data:image/svg+xml,<svg onload=alert(1)>",
        "livescript:alert(1)",
        "https://example.org/ok",
        "//evil.example/x.js",
        "/relative/path",
    ]
)
_URL_VALUE = st.one_of(
    _PAYLOADS.flatmap(_disguised),
    st.tuples(st.sampled_from([" ", "\x00", "\x1f", "\u00a0", ""]), _PAYLOADS).map("".join),
)


@st.composite
def _attribute(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        name, value = draw(_EVENT.flatmap(_mixed_case)), "alert(1)"
    elif kind == 1:
        name, value = draw(_URL_ATTRIBUTE.flatmap(_mixed_case)), draw(_URL_VALUE)
    else:
        name, value = draw(_PLAIN_ATTRIBUTE), draw(st.sampled_from(["x", "expression(alert(1))"]))
    quote = draw(st.sampled_from(['"', "'", ""]))
    if not quote:
        value = value.replace(" ", "").replace(">", "")
    separator = draw(st.sampled_from([" ", "/", "\t", "\n", " / "]))
    return f"{separator}{name}={quote}{value}{quote}"


@st.composite
def _tag(draw: st.DrawFn) -> str:
    name = draw(_TAG_NAMES)
    attributes = "".join(draw(st.lists(_attribute(), max_size=3)))
    close = draw(st.sampled_from([">", " />", "", ">", ">"]))
    return f"<{name}{attributes}{close}"


_FRAGMENTS = st.one_of(
    _tag(),
    _TAG_NAMES.map(lambda name: f"</{name}>"),
    st.sampled_from(
        [
            "alert(1)", "text ", "<!--", "-->", "<!-- <script>alert(1)</script> -->",
            "<![CDATA[", "]]>", "<", ">", "</", "<scr<script>ipt>", "<<script>script>",
            "<svg><script>alert(1)</script></svg>", "<math><mtext><table><mglyph><style>",
            "<svg><style><img src=x onerror=alert(1)></style></svg>", "&lt;script&gt;",
            "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
            "<a href=\"jav&#x09;ascript:alert(1)\">x</a>", "<img src=x onerror=alert(1)//",
            "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\"></iframe>",
            "<form><button formaction=javascript:alert(1)>x", "<?xml ?>", "<!DOCTYPE html>",
            "<a href=\"#\" onclick=\"x\">", "<p style=\"background:url(javascript:alert(1))\">",
        ]
    ),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)  # fmt: skip
HOSTILE_HTML = st.lists(_FRAGMENTS, max_size=14).map("".join)
BASES = st.sampled_from([None, "https://endseclusion.org/2024/03/a-story/", "http://x.test/"])

_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(HOSTILE_HTML, BASES)
@example('<a href="jav&#x61;script:alert(1)">x</a>', None)
@example('<a href=" &#14;  javascript:alert(1)">x</a>', None)
@example('<a href="java\tscript:alert(1)">x</a>', None)
@example('<img src="data:text/html;base64,PHNjcmlwdD4=">', None)
@example("<SvG/OnLoAd=alert(1)>", None)
@example('<iframe src="javascript:alert(1)" title="x"></iframe>', None)
@example(
    '<iframe src="https://www.youtube.com/embed/abcdef" title="a&quot;onclick=x"></iframe>', None
)
@example('<img class="wp-smiley" alt="&lt;script&gt;alert(1)&lt;/script&gt;" src="x">', None)
@example('<a href="x">', "javascript:alert(1)//")
def test_sanitised_html_holds_nothing_active(raw: str, base: str | None) -> None:
    output = clean_html(raw, base)
    assert problems(output) == [], (raw, output)


@_SETTINGS
@given(HOSTILE_HTML)
def test_sanitising_twice_changes_nothing_active(raw: str) -> None:
    """A template that runs the output through the sanitiser again finds nothing new."""
    once = clean_html(raw, "https://endseclusion.org/")
    assert problems(clean_html(once, "https://endseclusion.org/")) == []


@settings(max_examples=300, deadline=None)
@given(HOSTILE_HTML)
def test_clean_text_is_one_line_without_markup_from_tags(raw: str) -> None:
    """Titles: no line break or control character survives (header injection)."""
    text = clean_text(raw)
    assert not re.search(r"[\x00-\x1f\x7f\x85\u2028\u2029]", text), text


@pytest.mark.parametrize(
    "vector",
    [
        "<IMG SRC=JaVaScRiPt:alert('XSS')>",
        "<IMG SRC=`javascript:alert(\"RSnake says, 'XSS'\")`>",
        '<a onmouseover="alert(document.cookie)">xxs link</a>',
        "<IMG SRC=&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;&#97;&#108;>",
        "<IMG SRC=&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105>",
        "<IMG SRC=\"jav&#x0A;ascript:alert('XSS');\">",
        "<IMG SRC=\" &#14;  javascript:alert('XSS');\">",
        '<SCRIPT/XSS SRC="http://xss.rocks/xss.js"></SCRIPT>',
        '<BODY onload!#$%&()*~+-_.,:;?@[/|\\]^`=alert("XSS")>',
        '<<SCRIPT>alert("XSS");//\\<</SCRIPT>',
        '<IMG """><SCRIPT>alert("XSS")</SCRIPT>"\\>',
        '<svg/onload=alert("XSS")>',
        "<TABLE BACKGROUND=\"javascript:alert('XSS')\">",
        "<DIV STYLE=\"background-image: url(javascript:alert('XSS'))\">",
        '<a href="&#1;javascript:alert(1)">x</a>',
        '<math><a xlink:href="javascript:alert(1)">x</a></math>',
        '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">XSS</text></a></svg>',
        '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
        '<object data="javascript:alert(1)"></object>',
        "<details open ontoggle=alert(1)>",
        '<blockquote cite="javascript:alert(1)">q</blockquote>',
    ],
)
def test_known_xss_vectors(vector: str) -> None:
    """A few classic vectors (OWASP's filter evasion list), checked by name."""
    for base in (None, "https://endseclusion.org/"):
        output = clean_html(vector, base)
        assert problems(output) == [], (vector, output)


# ---- embeds turned into links (issue 13: full posts) ------------------------------

_EMBED_SRC = st.one_of(
    _URL_VALUE,
    st.sampled_from(
        [
            "https://www.youtube.com/embed/Xq3bC9kLm2A?feature=oembed",
            "https://www.youtube-nocookie.com/embed/abcdef",
            "//player.vimeo.com/video/42?h=1&amp;dnt=1",
            "https://player.example.com/embed/77",
        ]
    ),
)
_EMBED_TEXT = st.one_of(
    st.sampled_from(['a"onclick="x', "</a><script>alert(1)</script>", "&lt;img src=x&gt;", "ok"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)


@st.composite
def _embed(draw: st.DrawFn) -> str:
    """An iframe, video or audio with hostile src, title and poster, maybe inside a <p>."""
    kind = draw(st.sampled_from(["iframe", "video", "audio"]))
    quote = draw(st.sampled_from(['"', "'"]))
    src = draw(_EMBED_SRC).replace(quote, "")
    title = draw(_EMBED_TEXT).replace(quote, "")
    extra = draw(st.sampled_from(["", " onload=alert(1)", f" poster={quote}{src}{quote}"]))
    inner = draw(st.sampled_from(["", f"<source src={quote}{src}{quote}>", "<script>x</script>"]))
    if draw(st.booleans()):
        tag = f"<{kind} src={quote}{src}{quote} title={quote}{title}{quote}{extra}>"
    else:
        tag = f"<{kind} title={quote}{title}{quote}{extra}>"
    embed = f"{tag}{inner}</{kind}>"
    return f"<p>{embed}</p>" if draw(st.booleans()) else embed


@_SETTINGS
@given(st.lists(_embed(), min_size=1, max_size=3).map("".join), BASES)
@example('<iframe src="javascript:alert(1)" title="x"></iframe>', None)
@example('<p><iframe src="//player.vimeo.com/video/1" title=\'"><script>\'></iframe></p>', None)
@example('<video poster="javascript:alert(1)" src="https://e.org/v.mp4"></video>', None)
@example('<video><source src="jav&#x61;script:alert(1)"></video>', None)
def test_embeds_become_links_with_nothing_active(raw: str, base: str | None) -> None:
    output = clean_html(raw, base)
    assert problems(output) == [], (raw, output)
    assert "<p><p>" not in output
    for href in re.findall(r'href="([^"]*)"', output):
        assert urlsplit(_as_browser_sees_url(href)).scheme in ("", "http", "https"), href
