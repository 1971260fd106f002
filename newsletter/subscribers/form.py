"""The signup form for the organisation's own site (`newsletter form`), issue 13.

A plain HTML snippet to paste into a WordPress "Custom HTML" block: a POST to
NEWSLETTER_BASE_URL/subscribe with the fields the web signup reads (email,
optional name, and the `website` honeypot it checks), labels, a consent
sentence, no JavaScript. Styled inline so that it needs no stylesheet and
inherits the site's fonts and colours (`font: inherit`); unstyled on request.
The honeypot keeps its off-screen style either way: without it a person would
see a field they must leave empty.
"""

from __future__ import annotations

from newsletter.config import Settings
from newsletter.issues.templating import render_template

#: The honeypot field the web signup checks (newsletter.web.app: `website`).
HONEYPOT_FIELD = "website"
STYLES = ("inline", "none")


def signup_form(settings: Settings, *, style: str = "inline") -> str:
    """The snippet for `settings` (action = NEWSLETTER_BASE_URL/subscribe), ending in a newline."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    context = {
        "action": settings.url("subscribe"),
        "list_title": settings.list_title,
        "honeypot": HONEYPOT_FIELD,
        "styled": style == "inline",
    }
    return render_template(settings, "form.html", context).strip() + "\n"
