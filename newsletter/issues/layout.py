"""Fit a story's sanitised HTML into the email's column (rendering only, no sanitising).

The input is already safe (newsletter.issues.sanitize ran when the feed was
read); this module only adjusts it for a 600 px email read on a 375 px phone:

- headings are demoted below the story's own <h2>, keeping their order
  (a post's <h2>, <h4> become <h3>, <h4>: no level is skipped, as screen
  readers and axe's heading-order rule expect);
- an image's width attribute is capped at the column width (Outlook obeys
  the attribute, not the CSS max-width) and its height attribute dropped:
  every client scales the height to the width, and SpamAssassin reads
  width x height as image area (HTML_IMAGE_RATIO_* on a photo-rich post);
- a figure of a small image (a classic gallery's thumbnails) gets
  class="thumb", so a run of them sits side by side and wraps (CSS).

Tables are not stacked on a phone (a cell alone loses its column header):
their columns share the width and their cells wrap, long words included.

Everything else (pre-wrap code, captions, galleries, long URLs) is done by
CSS in templates/_email.css, inlined by premailer.

    fit_to_column(html, *, column=COLUMN_WIDTH, below=2) -> str
"""

from __future__ import annotations

import re

#: The story column: a 600 px container less 24 px of padding on each side.
COLUMN_WIDTH = 552

_HEADING_TAG = re.compile(r"<(/?)h([1-6])(?=[\s>/])", re.I)
_IMG = re.compile(r"<img\b[^>]*>", re.I)
_FIGURE = re.compile(r"<figure>((?:(?!</?figure\b).)*)</figure>", re.I | re.S)
#: Figures of images at most this wide sit side by side (two fit on a 375 px phone).
THUMB_WIDTH = COLUMN_WIDTH // 2 - 16
_SIZE = re.compile(r'\s(width|height)\s*=\s*(?:"\s*(\d+)\s*"|\'\s*(\d+)\s*\'|(\d+))', re.I)


def fit_to_column(html: str, *, column: int = COLUMN_WIDTH, below: int = 2) -> str:
    """`html` with its headings under level `below` and its images at most `column` wide."""
    if not html:
        return html
    html = _IMG.sub(lambda m: _fit_image(m.group(0), column), demote_headings(html, below))
    return _FIGURE.sub(_mark_thumb, html)


def _mark_thumb(match: re.Match[str]) -> str:
    """class="thumb" on a figure holding one small image (and maybe its caption)."""
    images = _IMG.findall(match.group(1))
    if len(images) != 1:
        return match.group(0)
    width = {
        m.group(1).lower(): m.group(2) or m.group(3) or m.group(4)
        for m in _SIZE.finditer(images[0])
    }.get("width")
    if not width or int(width) > THUMB_WIDTH:
        return match.group(0)
    return f'<figure class="thumb">{match.group(1)}</figure>'


def demote_headings(html: str, below: int = 2) -> str:
    """Map the heading levels used, in rank order, to below+1, below+2... (at most 6)."""
    levels = sorted({int(m.group(2)) for m in _HEADING_TAG.finditer(html)})
    if not levels:
        return html
    new_level = {level: min(6, below + 1 + rank) for rank, level in enumerate(levels)}

    def replace(match: re.Match[str]) -> str:
        return f"<{match.group(1)}h{new_level[int(match.group(2))]}"

    return _HEADING_TAG.sub(replace, html)


def _fit_image(tag: str, column: int) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1).lower() == "height":
            return ""
        width = int(match.group(2) or match.group(3) or match.group(4))
        return f' width="{min(width, column)}"'

    return _SIZE.sub(replace, tag)
