"""DKIM: the key `newsletter send` signs with, and the record published for it.

Loads the key the way `send` does (mail/dkim.py) and compares its public half
with the p= of the TXT record at <selector>._domainkey.<domain>.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from newsletter.config import Settings
from newsletter.doctor.dnsrecords import DnsFailure, TxtLookup, dns_failed, record_tags
from newsletter.doctor.report import Check, Status
from newsletter.errors import ConfigError
from newsletter.mail.dkimkey import GeneratedKey, load_key, public_key_b64


def _published_key(tags: Mapping[str, str]) -> tuple[bytes, str]:
    """The published p= as comparable bytes and a description like 'rsa 2048-bit'."""
    kind = tags.get("k", "rsa").lower()
    raw = base64.b64decode("".join(tags["p"].split()), validate=True)
    if kind == "ed25519":
        ed25519.Ed25519PublicKey.from_public_bytes(raw)  # validates
        return raw, "ed25519"  # never ours (we sign with RSA), but a valid record
    if kind != "rsa":
        raise ValueError(f"unknown key type k={kind}")
    public = serialization.load_der_public_key(raw)  # SubjectPublicKeyInfo or PKCS#1
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("p= is not an RSA key though k=rsa")
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki, f"rsa {public.key_size}-bit"


def _dkim_record(found: list[str]) -> str | None:
    """The first TXT record that looks like a DKIM key (it has a p= tag)."""
    return next((r for r in found if "p" in record_tags(r)), None)


def check_dkim(dns_lookup: TxtLookup, settings: Settings) -> Check:
    """The key `send` signs with (if any), and the record published for it."""
    try:
        key = load_key(settings)  # the very check `newsletter send` makes before sending
    except ConfigError as exc:
        return Check(
            "dkim",
            Status.FAIL,
            exc.message,
            "`newsletter dkim keygen` writes a key and prints the record to publish",
        )
    if key is None or settings.dkim_private_key is None:  # load_key: no key means no key path
        return Check(
            "dkim",
            Status.WARN,
            "DKIM signing is off (NEWSLETTER_DKIM_PRIVATE_KEY and NEWSLETTER_DKIM_SELECTOR are "
            "not set): no DKIM record checked",
            "if your mail provider signs, check its DKIM set-up there; to sign here, run "
            "`newsletter dkim keygen`",
        )
    ours = GeneratedKey(
        settings.dkim_private_key,
        key.selector,
        key.domain,
        public_key_b64(key.private_key.public_key()),
    )
    return check_dkim_record(dns_lookup, ours.record_name, ours.record_text)


def check_dkim_record(dns_lookup: TxtLookup, name: str, expected: str) -> Check:
    """The TXT record at <selector>._domainkey.<domain> must publish our public key."""
    publish = f"publish TXT {name}: {expected}"
    try:
        record = _dkim_record(dns_lookup.txt(name))
    except DnsFailure as exc:
        return dns_failed("dkim", f"TXT {name}", exc)
    if record is None:
        return Check(
            "dkim",
            Status.FAIL,
            f"No DKIM record at {name}: receivers cannot verify our signatures; "
            "Gmail and Yahoo require DKIM for bulk senders",
            publish,
        )
    tags = record_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        return Check("dkim", Status.FAIL, f"DKIM record at {name} has v={tags['v']}", publish)
    if not tags["p"]:
        return Check(
            "dkim",
            Status.FAIL,
            f"DKIM record at {name} has an empty p=: the key is revoked",
            publish,
        )
    try:
        published, described = _published_key(tags)
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        return Check(
            "dkim",
            Status.FAIL,
            f"DKIM record at {name} holds no valid public key ({exc})",
            f"{publish} (a long record is split into several quoted strings of one TXT "
            "record, never into several records)",
        )
    if published != _published_key(record_tags(expected))[0]:
        return Check(
            "dkim",
            Status.FAIL,
            f"The DKIM public key at {name} does not match NEWSLETTER_DKIM_PRIVATE_KEY: "
            "receivers will reject every signature",
            f"{publish}; or set NEWSLETTER_DKIM_SELECTOR to the selector of this key",
        )
    summary = f"DKIM record at {name}: {described} key, matches NEWSLETTER_DKIM_PRIVATE_KEY"
    if "y" in [flag.strip() for flag in tags.get("t", "").split(":")]:
        return Check(
            "dkim",
            Status.WARN,
            f"{summary}, but in testing mode (t=y)",
            "remove t=y once signatures verify",
        )
    return Check("dkim", Status.OK, summary)
