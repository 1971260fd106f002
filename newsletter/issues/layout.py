"""Fit a story's sanitised HTML into the email's column (rendering only, no sanitising).

The input is already safe (newsletter.issues.sanitize ran when the feed was
read); this module only adjusts it for a 600 px email read on a 375 px phone:

- headings are demoted below the story's own <h2>, keeping their order
  (a post's <h2>, <h4> become <h3>, <h4>: no level is skipped, as screen
  readers and axe's heading-order rule expect);
- image width/height attributes are capped at the column width, the height
  scaled to match (Outlook obeys the attributes, not the CSS max-width);
- tables of WIDE_TABLE columns or more get class="wide": on a phone their
  cells stack (CSS), where fewer columns simply wrap.

Everything else (tables that wrap, pre-wrap code, captions, galleries, long
URLs) is done by CSS in templates/_email.css, inlined by premailer.

    fit_to_column(html, *, column=COLUMN_WIDTH, below=2) -> str
"""

from __future__ import annotations

import re

#: The story column: a 600 px container less 24 px of padding on each side.
COLUMN_WIDTH = 552

_HEADING_TAG = re.compile(r"<(/?)h([1-6])(?=[\s>/])", re.I)
_IMG = re.compile(r"<img\b[^>]*>", re.I)
_TABLE = re.compile(r"(<table\b)([^>]*>)(.*?)</table>", re.I | re.S)
_FIRST_ROW = re.compile(r"<tr\b.*?(?:</tr>|$)", re.I | re.S)
_CELL = re.compile(r"<t[hd]\b", re.I)
#: From this many columns a table stacks its cells on a phone instead of wrapping them.
WIDE_TABLE = 4
_SIZE = re.compile(r'\s(width|height)\s*=\s*(?:"\s*(\d+)\s*"|\'\s*(\d+)\s*\'|(\d+))', re.I)


def fit_to_column(html: str, *, column: int = COLUMN_WIDTH, below: int = 2) -> str:
    """`html` with its headings under level `below` and its images at most `column` wide."""
    if not html:
        return html
    html = _IMG.sub(lambda m: _fit_image(m.group(0), column), demote_headings(html, below))
    return _TABLE.sub(_mark_wide, html)


def _mark_wide(match: re.Match[str]) -> str:
    row = _FIRST_ROW.search(match.group(3))
    if row is None or len(_CELL.findall(row.group(0))) < WIDE_TABLE:
        return match.group(0)
    return f'{match.group(1)} class="wide"{match.group(2)}{match.group(3)}</table>'


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
    sizes = {
        m.group(1).lower(): int(m.group(2) or m.group(3) or m.group(4)) for m in _SIZE.finditer(tag)
    }
    width, height = sizes.get("width"), sizes.get("height")
    if not width or width <= column:
        return tag
    new_height = round(height * column / width) if height else None

    def replace(match: re.Match[str]) -> str:
        name = match.group(1).lower()
        if name == "width":
            return f' width="{column}"'
        return f' height="{new_height}"' if new_height else ""

    return _SIZE.sub(replace, tag)
