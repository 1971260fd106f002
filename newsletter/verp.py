"""The envelope sender (Return-Path) of each message.

Today: the From address. Where NEWSLETTER_BOUNCE_ADDRESS is set, a per-delivery
VERP address (`bounces+TOKEN@domain`) will let any bounce map to its delivery.
"""

from __future__ import annotations

from newsletter.config import Settings


def envelope_sender(settings: Settings, delivery_id: int | None) -> str:
    """MAIL FROM for one delivery (None: a message outside any issue, e.g. a test copy)."""
    settings.require("from_address")
    assert settings.from_address is not None
    return settings.from_address.addr_spec
