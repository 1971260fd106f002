"""Turn sanitised story HTML into readable plain text, and cut HTML excerpts.

The text part of every email is a real rendering of the HTML part, not a
"view online" stub: spam filters (SpamAssassin's MPART_ALT_DIFF) penalise a
text part whose words differ from the HTML, and some readers (screen readers
in text mode, plain-text mail clients) only ever see this part.

    html_to_text(html, width=72) -> str
    excerpt_html(html, *, max_chars=600, max_paragraphs=2) -> str
    top_blocks(html) -> list[str]   # where a story may be cut (the clipping guard)
    cap_line_length(text, limit=900) -> str
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from html import escape, unescape
from html.parser import HTMLParser


def _names(words: str) -> frozenset[str]:
    return frozenset(words.split())


BLOCK_TAGS = _names(
    "address article aside blockquote dd div dl dt figcaption figure footer form h1 h2 h3 "
    "h4 h5 h6 header hr li main nav ol p pre section table tbody thead tfoot tr ul"
)
HEADINGS = _names("h1 h2 h3 h4 h5 h6")
SKIPPED = _names("script style head title template noscript")
VOID = _names("area base br col embed hr img input link meta param source track wbr")
LINK_SCHEMES = ("http://", "https://", "mailto:")
_SPACES = re.compile(r"\s+")


@dataclass
class _Block:
    text: str
    quote: int  # blockquote depth: each line gets "> " that many times
    list_run: int | None = None  # items of one (possibly nested) list: no blank line between


@dataclass
class _List:
    ordered: bool
    counter: int = 0


class _TextBuilder(HTMLParser):
    """Collects inline text into paragraphs and wraps each one as it closes."""

    def __init__(self, width: int) -> None:
        super().__init__(convert_charrefs=True)
        self.width = width
        self.blocks: list[_Block] = []
        self.inline: list[str] = []
        self.quote = 0
        self.lists: list[_List] = []
        self.marker: str | None = None  # list marker waiting for the item's first line
        self.pre = 0
        self.skip = 0
        self.links: list[tuple[str, int]] = []
        self.heading = False
        self.list_runs = 0  # counts top-level lists, so two lists in a row stay apart

    # -- parser callbacks ---------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED:
            self.skip += 1
            return
        values = {k: v or "" for k, v in attrs}
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in ("ul", "ol"):
            self.list_runs += not self.lists
            self.lists.append(_List(ordered=tag == "ol"))
        elif tag == "li":
            current = self.lists[-1] if self.lists else _List(ordered=False)
            current.counter += 1
            self.marker = f"{current.counter}. " if current.ordered else "- "
        elif tag == "blockquote":
            self.quote += 1
        elif tag == "pre":
            self.pre += 1
        elif tag in HEADINGS:
            self.heading = True
        elif tag == "br":
            self.inline.append("\n")
        elif tag == "hr":
            self.blocks.append(_Block("-" * min(self.width, 20), self.quote))
        elif tag == "img":
            alt = _SPACES.sub(" ", values.get("alt", "")).strip()
            if alt and not "".join(self.inline).strip():  # a picture of its own, not an emoji
                self.inline.append(f"[Image: {alt}]")
            elif alt:
                self.inline.append(alt)
        elif tag in ("td", "th") and "".join(self.inline).strip():
            self.inline.append(" | ")
        elif tag == "a":
            self.links.append((values.get("href", "").strip(), len(self.inline)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "a" and self.links:
            self._close_link(*self.links.pop())
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in ("ul", "ol") and self.lists:
            self.lists.pop()
        elif tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        elif tag in HEADINGS:
            self.heading = False

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = _SPACES.sub(" ", data)
        self.inline.append(data)

    # -- helpers ------------------------------------------------------------
    def _close_link(self, href: str, start: int) -> None:
        """Write a link as "text <url>", or just the url when the text is the url."""
        if not href.lower().startswith(LINK_SCHEMES):
            return  # anchors, relative or unknown schemes: the text alone reads fine
        start = min(start, len(self.inline))  # a block closed inside the link
        text = _SPACES.sub(" ", "".join(self.inline[start:])).strip()
        if not text or _same_target(text, href):
            self.inline[start:] = [href[7:] if href.lower().startswith("mailto:") else href]
        else:
            self.inline.append(f" <{href}>")

    def _flush(self) -> None:
        """Close the current paragraph: wrap it under its prefix and store it."""
        raw = "".join(self.inline)
        self.inline = []
        if self.pre:
            text = raw.strip("\n")
            if text.strip():
                self.blocks.append(_Block(text, self.quote))
            return
        lines = [" ".join(line.split()) for line in raw.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        while lines and not lines[0]:
            lines.pop(0)
        if not lines:
            return
        depth = len(self.lists)
        indent = "  " * max(0, depth - 1)
        first = indent + (self.marker or "")
        rest = " " * len(first)
        room = max(20, self.width - 2 * self.quote)
        wrapped: list[str] = []
        for line in lines:
            wrapped.extend(
                textwrap.wrap(
                    line,
                    width=room,
                    initial_indent=first if not wrapped else rest,
                    subsequent_indent=rest,
                    break_long_words=False,  # never split a URL
                    break_on_hyphens=False,
                )
                or [""]
            )
        if self.heading:
            wrapped.append("-" * min(room, max(len(w) for w in wrapped)))
        run = self.list_runs if depth else None
        self.marker = None
        self.blocks.append(_Block("\n".join(wrapped), self.quote, run))

    def result(self) -> str:
        self._flush()
        out: list[str] = []
        previous: _Block | None = None
        for block in self.blocks:
            prefix = "> " * block.quote
            if previous is not None:
                if block.list_run is not None and previous.list_run == block.list_run:
                    out.append("\n")
                else:
                    gap = ("> " * min(previous.quote, block.quote)).rstrip()
                    out.append("\n" + gap + "\n")
            out.append("\n".join((prefix + line).rstrip() for line in block.text.split("\n")))
            previous = block
        return "".join(out).strip("\n")


def _same_target(text: str, href: str) -> bool:
    """True when a link's text is its own URL (give or take scheme and trailing slash)."""

    def bare(value: str) -> str:
        value = value.lower().removeprefix("mailto:")
        for scheme in ("https://", "http://"):
            value = value.removeprefix(scheme)
        return value.removeprefix("www.").rstrip("/")

    return bare(text) == bare(href)


def html_to_text(html: str, width: int = 72) -> str:
    """Plain text for the text/plain part: wrapped paragraphs, links as "text <url>"."""
    builder = _TextBuilder(width)
    builder.feed(html or "")
    builder.close()
    return builder.result()


def cap_line_length(text: str, limit: int = 900) -> str:
    """Hard-split any line longer than `limit` (a pathological URL): SMTP caps lines at 998."""
    lines: list[str] = []
    for line in text.split("\n"):
        rest = line
        while len(rest) > limit:
            lines.append(rest[:limit])
            rest = rest[limit:]
        lines.append(rest)
    return "\n".join(lines)


# -- excerpts ---------------------------------------------------------------

# Left out of excerpts: the story image is shown on its own, tables need
# their own layout, and empty blocks would only add space.
DROPPED = _names("figure img picture video audio iframe table hr")
CONTAINERS = _names("div section article main")


@dataclass
class _Node:
    tag: str | None  # None for a text node
    raw: str = ""  # the start tag as written, or the escaped text
    children: list[_Node] = field(default_factory=list)

    def text(self) -> str:
        if self.tag is None:
            return self.raw
        if self.tag in SKIPPED:
            return ""
        return "".join(child.text() for child in self.children)

    def html(self) -> str:
        if self.tag is None:
            return self.raw
        if self.tag in VOID:
            return self.raw
        return self.raw + "".join(c.html() for c in self.children) + f"</{self.tag}>"


class _TreeBuilder(HTMLParser):
    """A small forgiving tree of the (already sanitised) HTML, for cutting on elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root")
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, self.get_starttag_text() or f"<{tag}>")
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:  # "<p/>" and the like are empty anyway: drop them
            self.stack[-1].children.append(_Node(tag, self.get_starttag_text() or f"<{tag}>"))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(_Node(None, escape(data, quote=False)))


def _visible(node: _Node) -> str:
    return " ".join(unescape(node.text()).split())


def excerpt_html(html: str, *, max_chars: int = 600, max_paragraphs: int = 2) -> str:
    """The first paragraphs of `html`, cut between top-level elements, never inside one.

    Keeps every issue small (Gmail clips past ~102 KB and hides the footer).
    A single oversized first block falls back to its text, cut on a word.
    """
    builder = _TreeBuilder()
    builder.feed(html or "")
    builder.close()
    nodes = [n for n in builder.root.children if n.tag not in DROPPED]
    while True:  # look inside a lone wrapper <div>
        solid = [n for n in nodes if n.tag is not None or n.raw.strip()]
        if len(solid) == 1 and solid[0].tag in CONTAINERS:
            nodes = [n for n in solid[0].children if n.tag not in DROPPED]
        else:
            break
    kept: list[str] = []
    chars = paragraphs = 0
    for node in nodes:
        text = _visible(node)
        if not text:
            if node.tag == "br" or (kept and node.tag is None):
                kept.append(node.html() if node.tag else "\n")  # keep inline runs apart
            continue
        if kept and chars and chars + len(text) > max_chars * 1.5:
            break
        if not chars and len(text) > max_chars * 2:
            return "<p>" + escape(_cut_words(text, max_chars), quote=False) + "</p>"
        kept.append(node.html())
        chars += len(text)
        paragraphs += node.tag is not None and node.tag in BLOCK_TAGS
        if paragraphs >= max_paragraphs or chars >= max_chars:
            break
    return "".join(kept).strip()


def top_blocks(html: str) -> list[str]:
    """The top-level pieces of `html` (paragraphs, figures, tables...), in order.

    Joining any first N of them gives well-formed HTML cut at a paragraph
    boundary: how a story too long for one email is shortened. Runs of inline
    content between blocks stay one piece; a lone wrapper <div> is looked into.
    """
    builder = _TreeBuilder()
    builder.feed(html or "")
    builder.close()
    nodes = builder.root.children
    while True:
        solid = [n for n in nodes if n.tag is not None or n.raw.strip()]
        if len(solid) == 1 and solid[0].tag in CONTAINERS:
            nodes = solid[0].children
        else:
            break
    pieces: list[str] = []
    inline: list[str] = []
    for node in nodes:
        if node.tag is not None and (node.tag in BLOCK_TAGS or node.tag in DROPPED):
            if "".join(inline).strip():
                pieces.append("".join(inline).strip())
            inline = []
            pieces.append(node.html())
        else:
            inline.append(node.html())
    if "".join(inline).strip():
        pieces.append("".join(inline).strip())
    return pieces


def _cut_words(text: str, limit: int) -> str:
    """Cut plain text at a word boundary and add an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.-–—")
    return cut + "…"
