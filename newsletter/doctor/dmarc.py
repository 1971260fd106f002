"""DMARC: one v=DMARC1 record with a policy at the From domain or its organisational domain.

The organisational domain (RFC 7489 3.2) comes from the Public Suffix List the
publicsuffixlist package ships: news.example.co.uk falls back to example.co.uk.
"""

from __future__ import annotations

import functools
import re

from publicsuffixlist import PublicSuffixList

from newsletter.doctor.dnsrecords import DnsFailure, TxtLookup, dns_failed, record_tags
from newsletter.doctor.report import Check, Status

_DMARC = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)


def _dmarc_records(dns_lookup: TxtLookup, domain: str) -> list[str]:
    return [r for r in dns_lookup.txt(f"_dmarc.{domain}") if _DMARC.match(r)]


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The shipped Public Suffix List, parsed once, on first use."""
    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """The registered domain under its public suffix: news.example.co.uk -> example.co.uk.

    The Public Suffix List is the one the publicsuffixlist package ships (no
    download); a name under an unknown top-level domain (like .test) keeps
    its last two labels.
    """
    name = domain.strip().rstrip(".").lower()
    return _public_suffixes().privatesuffix(name) or name


def check_dmarc(dns_lookup: TxtLookup, domain: str) -> Check:
    """RFC 7489: one v=DMARC1 record at _dmarc.<domain> (or its parent domain) with a policy."""
    name = f"_dmarc.{domain}"
    try:
        records = _dmarc_records(dns_lookup, domain)
        where = name
        parent = organisational_domain(domain)
        if not records and parent != domain.strip().rstrip(".").lower():
            # receivers fall back to the organisational domain (RFC 7489 3.2)
            records, where = _dmarc_records(dns_lookup, parent), f"_dmarc.{parent}"
    except DnsFailure as exc:
        return dns_failed("dmarc", f"TXT {name}", exc)
    if not records:
        return Check(
            "dmarc",
            Status.FAIL,
            f"No DMARC record at {name}: Gmail and Yahoo require one for bulk senders",
            f"publish e.g. v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}",
        )
    if len(records) > 1:
        return Check(
            "dmarc",
            Status.FAIL,
            f"{len(records)} DMARC records at {where}: receivers ignore them all",
            "keep exactly one v=DMARC1 record",
        )
    tags = record_tags(records[0])
    policy = tags.get("sp" if where != name and "sp" in tags else "p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Check(
            "dmarc",
            Status.FAIL,
            f"DMARC record at {where} has no valid policy (p=none, quarantine or reject): "
            f"{records[0]}",
            f"publish e.g. v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}",
        )
    hints = []
    if policy == "none":
        hints.append("p=none only monitors; move to p=quarantine once reports show mail passes")
    if "rua" not in tags:
        hints.append(f"add rua=mailto:dmarc-reports@{domain} to receive aggregate reports")
    inherited = f" (inherited by {domain})" if where != name else ""
    return Check(
        "dmarc",
        Status.OK,
        f"DMARC record at {where}{inherited}: policy {policy}",
        "; ".join(hints) or None,
    )
