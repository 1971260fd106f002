"""The double opt-in email: one link, nothing the visitor typed.

Only the address (which must be ours to write to) and the list's own words go
into it: echoing a visitor's name would let bots use the signup form to mail
their text to strangers (listmonk #1133), so `To:` is the bare address.

It goes through the issue email's own path (`newsletter.mail.message.MessageTemplate`):
the same header set (List-Id, one-click List-Unsubscribe, Precedence, Date,
a Message-ID on the From domain), the same CRLF serialisation and, when DKIM
is configured, the same signature with the list headers signed. It is styled
by the issue email's stylesheet (`_email.css`, inlined), so it looks like the
newsletter it announces.
"""

from __future__ import annotations

import re
from typing import Any

from newsletter.config import Settings
from newsletter.issues.render import content_mode, render_bodies
from newsletter.mail.message import MessageTemplate, message_date, unsubscribe_url
from newsletter.mail.transport import Reply

#: The words on the confirm page's button; the email names the same words.
CONFIRM_BUTTON = "Confirm my subscription"

#: A permanent refusal that names the recipient, when the server gives no enhanced code.
_NAMES_RECIPIENT = re.compile(
    r"user|mailbox|recipient|no such|unknown|does not exist|address", re.IGNORECASE
)
_ENHANCED = re.compile(r"^\s*5\.(\d{1,3})\.(\d{1,3})\b")


def email_context(settings: Settings) -> dict[str, Any]:
    """What every email styled by `_email.css` needs, whatever else its template uses.

    The stylesheet reads `content_mode` (NEWSLETTER_STORY_CONTENT); an organisation's
    own `_email.css` in NEWSLETTER_TEMPLATES_DIR may read it without a default, so
    every email that includes the stylesheet passes it (issue 13).
    """
    return {
        "list_title": settings.list_title,
        "postal_address": settings.postal_address or "",
        "content_mode": content_mode(settings),
    }


def confirmation_subject(settings: Settings) -> str:
    return f"Please confirm your subscription to {settings.list_title}"


def build_confirmation(
    settings: Settings,
    to: str,
    confirm_url: str,
    *,
    expires_days: int,
    unsubscribe_token: str,
) -> bytes:
    """The confirmation message for `to`, ready for SMTP DATA (signed when DKIM is set).

    It carries the list headers too: a person signed up by someone else can stop
    it with one click, and List-Id + List-Unsubscribe + Precedence keep spam
    filters calm (SpamAssassin's MAILING_LIST_MULTI).
    """
    settings.require("from_address")
    subject = confirmation_subject(settings)
    context = {
        **email_context(settings),
        "subject": subject,
        "confirm_url": confirm_url,
        "button_label": CONFIRM_BUTTON,
        "expires_days": expires_days,
        # the real link, not the issue's placeholder: this body is rendered per message
        "unsubscribe_url": unsubscribe_url(settings, unsubscribe_token),
    }
    html, text = render_bodies(settings, "confirm_email", context)
    template = MessageTemplate(settings, subject=subject, html=html, text=text, issue_id=None)
    return template.personalise(
        to, None, unsubscribe_token, message_id=template.new_message_id(), date=message_date()
    )


def recipient_refused(reply: Reply) -> bool:
    """A permanent refusal of the *address* (5.1.x, 5.2.1, or a 550 naming the user).

    Anything else (4xx, 5.7.x policy, a content filter's plain 550) is the
    sender's side or temporary: retried with backoff, never blamed on the visitor.
    """
    if not 500 <= reply.code < 600:
        return False
    enhanced = _ENHANCED.match(reply.text)
    if enhanced:
        return enhanced[1] == "1" or (enhanced[1], enhanced[2]) == ("2", "1")
    return reply.code in (550, 551, 553) and bool(_NAMES_RECIPIENT.search(reply.text))
