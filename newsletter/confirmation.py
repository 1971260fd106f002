"""The double opt-in email: one link, nothing the visitor typed.

Only the address (which must be ours to write to) and the list's own words go
into it: echoing a visitor's name would let bots use the signup form to mail
their text to strangers (listmonk #1133). Like every email here it is
multipart text + HTML with Date and a Message-ID on the From domain,
serialised with CRLF line ends (email.policy.SMTP).
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

from newsletter.config import Settings
from newsletter.message import header_safe, message_date
from newsletter.templating import render_template


def build_confirmation(
    settings: Settings, to: str, confirm_url: str, *, expires_days: int, unsubscribe_url: str
) -> bytes:
    """The confirmation message for `to`, ready for SMTP DATA.

    It carries the list headers too: a person signed up by someone else can stop
    it with one click, and List-Id + List-Unsubscribe + Precedence keep spam
    filters calm (SpamAssassin's MAILING_LIST_MULTI).
    """
    settings.require("from_address")
    context = {
        "list_title": settings.list_title,
        "confirm_url": confirm_url,
        "expires_days": expires_days,
        "postal_address": settings.postal_address or "",
    }
    msg = EmailMessage(policy=SMTP)
    msg["From"] = settings.from_address
    msg["To"] = to
    msg["Subject"] = header_safe(f"Please confirm your subscription to {settings.list_title}")
    msg["Date"] = message_date()
    msg["Message-ID"] = make_msgid(domain=settings.from_domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["List-Id"] = settings.list_id
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Precedence"] = "bulk"
    msg.set_content(render_template(settings, "confirm_email.txt", context))
    msg.add_alternative(render_template(settings, "confirm_email.html", context), subtype="html")
    return msg.as_bytes(policy=SMTP)
