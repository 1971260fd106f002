"""Turn untrusted feed text and HTML into something safe to put in an email.

Feed text reaches email headers (subjects) and feed HTML reaches templates, so
both are cleaned here, once, before anything else sees them:

- `clean_text` gives one plain line: no tags, no CR/LF or other line breaks
  (header injection), entities unescaped exactly once, mojibake repaired.
- `clean_html` removes WordPress cruft, then sanitises with nh3 against an
  explicit allow-list (no script, iframe, event handlers, javascript: URLs)
  and makes relative URLs absolute so they work inside an email.
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import urljoin, urlsplit, urlunsplit

import ftfy
import nh3

__all__ = [
    "clean_html",
    "clean_text",
    "display_url",
    "first_content_image",
    "is_avatar",
    "is_emoji_image",
    "is_gravatar",
    "normalize_link",
    "plain_id",
    "safe_url",
]

ELLIPSIS = "\u2026"

# Bidi overrides and isolates let a title spoof its own display; drop them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WHITESPACE = re.compile(r"\s+")
_LINE_BREAKS_AND_C0 = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_SPACE_BEFORE_CLOSE = re.compile(r"\s+(</(?:p|li|h[2-4]|figcaption|td|th|blockquote)>)")
# A lone "Â" next to a space or at the edge is the debris of a latin1-decoded
# NBSP whose second byte was already stripped; ftfy cannot see it any more.
_LONE_A_CIRCUMFLEX = re.compile(r"(?<![^\W\d_])\u00c2(?![^\W\d_])")

_FTFY = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False)

ALLOWED_SCHEMES = frozenset({"http", "https", "mailto"})
ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "a", "strong", "em", "b", "i", "u", "s", "del", "ins", "sub", "sup",
        "small", "mark", "abbr", "cite", "q", "code", "pre", "kbd", "blockquote",
        "ul", "ol", "li", "dl", "dt", "dd", "h2", "h3", "h4", "figure", "figcaption", "img",
        "table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "abbr": {"title"},
    "ol": {"start"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
}
_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
_NUMERIC_ATTRIBUTES = frozenset({"width", "height", "colspan", "rowspan", "start"})

# First pass: a permissive parse that only normalises markup, so the cruft
# patterns below see one canonical serialisation (double-quoted attributes).
_PREPASS_TAGS = ALLOWED_TAGS | {"h1", "h5", "h6", "iframe", "span", "video", "audio", "source"}
_PREPASS_ATTRIBUTES: dict[str, set[str]] = {
    **ALLOWED_ATTRIBUTES,
    "*": {"class"},
    "iframe": {"src", "title"},
    "video": {"src", "poster", "title"},
    "audio": {"src", "title"},
    "source": {"src"},
}
_DROP_WITH_CONTENT = {"script", "style", "noscript", "template", "object", "embed", "form"}
_DROP_WITH_CONTENT_FINAL = _DROP_WITH_CONTENT | {"iframe"}

_SMILEY = re.compile(r'<img\b[^>]*\bclass="[^"]*\b(?:wp-smiley|emoji)\b[^"]*"[^>]*>')
_IFRAME = re.compile(
    r"<p\b[^>]*>\s*<iframe\b([^>]*)>.*?</iframe>\s*</p>|<iframe\b([^>]*)>.*?</iframe>", re.S
)
_MEDIA = re.compile(r"<(video|audio)\b([^>]*)>(.*?)</\1>", re.S)
_SOURCE_SRC = re.compile(r'<source\b[^>]*\ssrc="([^"]*)"')
# Classic-editor captions: the [caption] wrapper <div> is gone after the first pass,
# its image (maybe linked) and <p class="wp-caption-text"> remain side by side.
_WP_CAPTION = re.compile(
    r"((?:<a\b[^>]*>\s*)?<img\b[^>]*>(?:\s*</a>)?)\s*"
    r'<p\b[^>]*\bclass="[^"]*\bwp-caption-text\b[^"]*"[^>]*>(.*?)</p>',
    re.S,
)
_MORE_LINK = re.compile(r"<a\b[^>]*>\s*Continue reading\b.*?</a>", re.S | re.I)
_CONTINUE_READING = re.compile(
    r"Continue reading(?:\s|&nbsp;)*(?:"
    r'<span class="[^"]*screen-reader-text[^"]*">.*?</span>\s*'
    r"(?:<span\b[^>]*>\s*(?:\u2192|&rarr;)\s*</span>|\u2192)?"
    r"|<span\b[^>]*>\s*(?:\u2192|&rarr;)\s*</span>|\u2192)",
    re.S | re.I,
)
_YOAST = re.compile(
    r"<p\b[^>]*>\s*The post <a\b[^>]*>.*?</a> appeared first on <a\b[^>]*>.*?</a>\.?\s*</p>",
    re.S,
)
_TRAILING_MORE = re.compile(r"\s*\[(?:\u2026|\.\.\.)\](?=(?:\s|</\w+>)*$)")
_EMPTY_P = re.compile(r"<p\b[^>]*>(?:\s|&nbsp;|\u00a0|<br>)*</p>")
_HEADING = re.compile(r"<(/?)h([156])\b")
_IMG_TAG = re.compile(r"<img\b[^>]*>")
_IMG_ATTRIBUTE = re.compile(r'\s(src|alt|width|height)="([^"]*)"')
_IMG_WITHOUT_ALT = re.compile(r'<img\b(?![^>]*\salt=")')
_IMG_WITHOUT_SRC = re.compile(r'<img\b(?![^>]*\ssrc=")[^>]*>')


def clean_text(value: str | None, max_length: int = 300) -> str:
    """One safe plain-text line: used for titles, authors, subjects.

    Tags are stripped and entities unescaped exactly once (nh3 parses the
    markup, `html.unescape` undoes its escaping), so "AT&amp;T" becomes
    "AT&T" and "AT&amp;amp;T" becomes "AT&amp;T". Every line break and control
    character becomes a space: a CR/LF that reached a header would inject one.
    """
    if not value:
        return ""
    # C0 controls and line breaks become spaces first: nh3 would delete some
    # (gluing words) and ftfy would read a lone NEL as a cp1252 ellipsis.
    # Other C1 controls stay for ftfy: they are how latin1 mojibake looks.
    text = _LINE_BREAKS_AND_C0.sub(" ", value)
    text = html.unescape(nh3.clean(text, tags=set(), strip_comments=True))
    text = _fix_mojibake(text)
    text = "".join(_plain_char(ch) for ch in text)
    text = _WHITESPACE.sub(" ", text).strip()
    return _truncate(text, max_length)


def clean_html(value: str | None, base_url: str | None = None) -> str:
    """Sanitised, email-ready HTML from a feed's content or description.

    Cruft is removed on nh3's canonical output of a permissive first pass,
    then the strict second pass is the only security boundary: whatever the
    regular expressions miss is still sanitised.
    """
    if not value or not value.strip():
        return ""
    text = _fix_mojibake(value)
    text = nh3.clean(
        text,
        tags=set(_PREPASS_TAGS),
        attributes=_PREPASS_ATTRIBUTES,
        clean_content_tags=_DROP_WITH_CONTENT,
        url_schemes=set(ALLOWED_SCHEMES),
        link_rel=None,
        strip_comments=True,
    )
    text = _SMILEY.sub(_smiley_to_text, text)
    text = _IFRAME.sub(_iframe_to_link, text)
    text = _MEDIA.sub(_media_to_link, text)
    text = _WP_CAPTION.sub(r"<figure>\1<figcaption>\2</figcaption></figure>", text)
    text = _MORE_LINK.sub("", text)
    text = _CONTINUE_READING.sub("", text)
    text = _YOAST.sub("", text)
    text = _TRAILING_MORE.sub("", text)
    text = _HEADING.sub(lambda m: f"<{m.group(1)}h{'2' if m.group(2) == '1' else '4'}", text)

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if attr in _URL_ATTRIBUTES:
            return safe_url(value, base_url, allow_relative=True)
        if attr in _NUMERIC_ATTRIBUTES:
            return value.strip() if value.strip().isdigit() else None
        return value

    text = nh3.clean(
        text,
        tags=set(ALLOWED_TAGS),
        attributes=ALLOWED_ATTRIBUTES,
        clean_content_tags=_DROP_WITH_CONTENT_FINAL,
        url_schemes=set(ALLOWED_SCHEMES),
        attribute_filter=attribute_filter,
        link_rel=None,
        strip_comments=True,
    )
    text = _IMG_WITHOUT_SRC.sub("", text)
    text = _IMG_WITHOUT_ALT.sub('<img alt=""', text)
    text = _SPACE_BEFORE_CLOSE.sub(r"\1", text)
    text = _EMPTY_P.sub("", text)
    return text.strip()


def safe_url(
    value: str | None, base_url: str | None = None, *, allow_relative: bool = False
) -> str | None:
    """`value` made absolute against `base_url`; None unless http(s)/mailto.

    The scheme is checked after joining: a hostile base must not turn a
    relative URL into a javascript: one.
    """
    if not value:
        return None
    url = "".join(ch for ch in value.strip() if unicodedata.category(ch)[0] != "C")
    if not url:
        return None
    if base_url:
        try:
            url = urljoin(base_url.strip(), url)
        except ValueError:
            return None
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    if scheme in ALLOWED_SCHEMES:
        return url
    if not scheme and allow_relative:
        return url
    return None


def is_gravatar(url: str | None) -> bool:
    """True for Gravatar avatars: Jetpack puts the author's in media:content."""
    if not url:
        return False
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return False
    return host == "gravatar.com" or host.endswith(".gravatar.com")


def is_emoji_image(url: str | None) -> bool:
    """True for WordPress's emoji PNG/SVG images (s.w.org/images/core/emoji)."""
    return bool(url) and "/images/core/emoji/" in str(url)


def is_avatar(url: str | None) -> bool:
    """Not a story image: a Gravatar or a WordPress emoji."""
    return is_gravatar(url) or is_emoji_image(url)


def first_content_image(content_html: str) -> tuple[str | None, str | None]:
    """(src, alt) of the first real image of sanitised HTML, or (None, None).

    Gravatars, emoji and 1x1 tracking pixels are skipped.
    """
    for tag in _IMG_TAG.findall(content_html):
        attrs = {name: html.unescape(value) for name, value in _IMG_ATTRIBUTE.findall(tag)}
        url = attrs.get("src")
        if not url or not url.startswith(("http://", "https://")) or len(url) > 2000:
            continue
        if is_avatar(url) or {attrs.get("width"), attrs.get("height")} & {"0", "1"}:
            continue
        return url, clean_text(attrs.get("alt"), 500) or None
    return None, None


def display_url(url: str) -> str:
    """The URL without any user:password, fit for a message."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def plain_id(value: object) -> str | None:
    """An opaque identifier: kept as given, bar control characters and edge spaces."""
    if not isinstance(value, str):
        return None
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in value)
    return " ".join(text.split()) or None


def normalize_link(url: str) -> str:
    """The link as an identity: no scheme, no fragment, no trailing slash.

    http/https and trailing-slash variants of one post are the same story.
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.port and parts.port not in (80, 443):
        host = f"{host}:{parts.port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{host}{path}{query}"


def _fix_mojibake(text: str) -> str:
    """ftfy with HTML left alone (unescaping is the caller's decision)."""
    text = ftfy.fix_text(text, config=_FTFY)
    return _LONE_A_CIRCUMFLEX.sub(" ", text)


def _plain_char(ch: str) -> str:
    """A space for every line break and control character; "" for bidi tricks."""
    if ch in _BIDI_CONTROLS:
        return ""
    if ch.isspace() or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
        return " "
    return ch


def _truncate(text: str, max_length: int) -> str:
    """Cap at `max_length` characters, at a word boundary when there is one."""
    if max_length <= 0 or len(text) <= max_length:
        return text
    cut = text[: max_length - 1]
    space = cut.rfind(" ")
    if space > max_length // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + ELLIPSIS


def _attribute(tag: str, name: str) -> str | None:
    match = re.search(rf'\s{re.escape(name)}="([^"]*)"', tag)
    return html.unescape(match.group(1)) if match else None


def _smiley_to_text(match: re.Match[str]) -> str:
    """WordPress replaces emoji by images; the alt holds the emoji itself."""
    alt = (_attribute(match.group(0), "alt") or "").strip()
    return html.escape(alt, quote=False) if 0 < len(alt) <= 16 else ""


def _iframe_to_link(match: re.Match[str]) -> str:
    """Embeds cannot play in email: a paragraph with a link naming what they showed.

    No thumbnail is made up (a YouTube still would be one more remote fetch, and a
    tracking-free email fetches only what the feed itself shows).
    """
    attributes = match.group(1) if match.group(1) is not None else match.group(2)
    src = safe_url(_attribute(attributes, "src"), allow_relative=True)
    if not src or src.startswith("mailto:"):
        return ""
    if src.startswith("//"):
        src = "https:" + src
    watch = _youtube_watch_url(src) or _vimeo_url(src)
    title = clean_text(_attribute(attributes, "title") or "", 200)
    if watch:
        site = "YouTube" if "youtube" in watch else "Vimeo"
        src, label = watch, f"Watch the video on {site}"
    else:
        host = (urlsplit(src).hostname or "").removeprefix("www.")
        label = f"View the embedded content on {host}" if host else "View the embedded content"
    if title:
        label += f": {title}"
    return f'<p><a href="{html.escape(src)}">{html.escape(label, quote=False)}</a></p>'


def _media_to_link(match: re.Match[str]) -> str:
    """<video>/<audio> cannot play in most mail clients: a link, after the feed's poster if any."""
    kind, attributes, inner = match.groups()
    src = _attribute(attributes, "src")
    if not src:
        source = _SOURCE_SRC.search(inner)
        src = html.unescape(source.group(1)) if source else None
    if not src:
        return ""
    title = clean_text(_attribute(attributes, "title") or "", 200)
    label = "Watch the video" if kind == "video" else "Listen to the recording"
    if title:
        label += f": {title}"
    link = html.escape(src)
    poster = _attribute(attributes, "poster") if kind == "video" else None
    still = ""
    if poster:
        image = f'<img src="{html.escape(poster)}" alt="{html.escape(label)}">'
        still = f'<a href="{link}">{image}</a><br>'
    return f'<p>{still}<a href="{link}">{html.escape(label, quote=False)}</a></p>'


_YOUTUBE_EMBED = re.compile(
    r"^(?:https?:)?//(?:www\.)?youtube(?:-nocookie)?\.com/embed/([\w-]{6,})", re.I
)


_VIMEO_PLAYER = re.compile(r"^(?:https?:)?//player\.vimeo\.com/video/(\d+)", re.I)


def _youtube_watch_url(src: str) -> str | None:
    match = _YOUTUBE_EMBED.match(src.strip())
    return f"https://www.youtube.com/watch?v={match.group(1)}" if match else None


def _vimeo_url(src: str) -> str | None:
    match = _VIMEO_PLAYER.match(src.strip())
    return f"https://vimeo.com/{match.group(1)}" if match else None
