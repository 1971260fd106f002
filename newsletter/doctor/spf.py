"""SPF: one `v=spf1` record at the From domain, and the DNS lookups it costs a receiver.

`check_spf` gives the doctor's verdict; the walk under it follows the record's
include: and redirect= and counts its lookups (RFC 7208 4.6.4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from newsletter.doctor.dnsrecords import DnsFailure, TxtLookup, dns_failed
from newsletter.doctor.report import Check, Status

MAX_SPF_LOOKUPS = 10  # RFC 7208 4.6.4: more is a permanent error
MAX_SPF_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: lookups that find nothing
_SPF_WALK_CAP = 60  # records read at most: a huge include tree still ends quickly
_SPF_COUNTED = ("a", "mx", "ptr", "exists", "include")


def _spf_records(found: list[str]) -> list[str]:
    return [r for r in found if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]


@dataclass
class _SpfWalk:
    """What following an SPF record's includes and redirect found."""

    lookups: int = 0
    void: int = 0
    records_read: int = 0
    problems: list[str] = field(default_factory=list)
    per_include: dict[str, int] = field(default_factory=dict)


_SPF_TERM = re.compile(r"^[+?~-]?([a-z][a-z0-9_.-]*)(?:([:=])([^/]*))?", re.IGNORECASE)


def _spf_mechanism(term: str) -> tuple[str, str]:
    """'~include:_spf.x.test' -> ('include', '_spf.x.test'); 'redirect=y' -> ('redirect', 'y').

    A modifier other than redirect keeps its '=' ('exp=' is not 'exists:'); a
    value stops at a CIDR length ('a:mail.x.test/24' -> 'mail.x.test').
    """
    match = _SPF_TERM.match(term.strip())
    if match is None:
        return "", ""
    name, sep, value = match.group(1).lower(), match.group(2) or "", match.group(3) or ""
    if sep == "=" and name != "redirect":
        return f"{name}=", value
    return name, value


def _walk_spf(dns_lookup: TxtLookup, record: str, walk: _SpfWalk, path: tuple[str, ...]) -> None:
    """Count the DNS lookups `record` makes, following include: and redirect= (RFC 7208 4.6.4).

    Raises DnsFailure when a record it needs cannot be read.
    """
    terms = record.split()[1:]
    has_all = any(t.lower().lstrip("+-~?") == "all" for t in terms)
    targets: list[tuple[str, str]] = []
    for term in terms:
        name, value = _spf_mechanism(term)
        if name in _SPF_COUNTED:
            walk.lookups += 1
            if name == "include" and value:
                targets.append(("include", value))
        elif name == "redirect" and value and not has_all:  # ignored when 'all' is there
            walk.lookups += 1
            targets.append(("redirect", value))
    for kind, given in targets:
        target = given.rstrip(".")
        before = walk.lookups
        if "%" in target:  # a macro, expanded per message: nothing to follow here
            continue
        if target in path:
            chain = " -> ".join([*path, target])
            walk.problems.append(f"{kind}:{target} loops back ({chain})")
            continue
        if walk.records_read >= _SPF_WALK_CAP:
            too_many = f"more than {_SPF_WALK_CAP} nested SPF records"
            if too_many not in walk.problems:
                walk.problems.append(too_many)
            return
        walk.records_read += 1
        found = dns_lookup.txt(target)
        records = _spf_records(found)
        if not found:  # NXDOMAIN or no TXT at all: a void lookup
            walk.void += 1
        if not records:
            walk.problems.append(f"{kind}:{target} has no SPF record")
            continue
        if len(records) > 1:
            walk.problems.append(f"{kind}:{target} has {len(records)} SPF records")
            continue
        _walk_spf(dns_lookup, records[0], walk, (*path, target))
        if len(path) == 1:
            walk.per_include[f"{kind}:{target}"] = walk.lookups - before + 1


def check_spf(dns_lookup: TxtLookup, domain: str) -> Check:
    """RFC 7208: one `v=spf1` TXT record at the From domain, ending in ~all or -all.

    Its include: and redirect= are followed: more than 10 DNS lookups or 2 void
    lookups over the whole tree is a permanent error receivers act on.
    """
    try:
        found = dns_lookup.txt(domain)
    except DnsFailure as exc:
        return dns_failed("spf", f"TXT {domain}", exc)
    records = _spf_records(found)
    if not records and domain in dns_lookup.nxdomain:
        return Check(
            "spf",
            Status.FAIL,
            f"The domain {domain} does not exist in DNS (NXDOMAIN): receivers refuse mail "
            "from a domain that does not exist",
            "check the domain of NEWSLETTER_FROM, or register and publish it",
        )
    if not records:
        return Check(
            "spf",
            Status.FAIL,
            f"No SPF record at {domain}: receivers cannot tell which servers may send as "
            f"@{domain}; Gmail and Yahoo require SPF and DKIM for bulk senders",
            f"publish a TXT record at {domain} like v=spf1 include:<your mail provider> ~all",
        )
    if len(records) > 1:
        return Check(
            "spf",
            Status.FAIL,
            f"{len(records)} SPF records at {domain}: receivers treat that as an error "
            "(RFC 7208 permerror) and ignore them all",
            "merge them into one v=spf1 record",
        )
    record = records[0]
    terms = record.split()[1:]
    all_term = next((t.lower() for t in terms if t.lower().lstrip("+-~?") == "all"), None)
    if all_term in ("all", "+all"):
        return Check(
            "spf",
            Status.FAIL,
            f"SPF record at {domain} ends in {all_term}: it lets any server send as @{domain}",
            "end it with ~all or -all",
        )
    walk = _SpfWalk()
    try:
        _walk_spf(dns_lookup, record, walk, (domain,))
    except DnsFailure as exc:
        return dns_failed("spf", f"the includes of the SPF record at {domain}", exc)
    if walk.lookups > MAX_SPF_LOOKUPS:
        heaviest = sorted(walk.per_include.items(), key=lambda item: -item[1])[:3]
        detail = ", ".join(f"{term} needs {count}" for term, count in heaviest)
        return Check(
            "spf",
            Status.FAIL,
            f"SPF needs {walk.lookups} DNS lookups; receivers allow {MAX_SPF_LOOKUPS} "
            f"(RFC 7208 permerror) and ignore the record at {domain}",
            "remove includes you no longer use, or replace some by ip4:/ip6: ranges"
            + (f" ({detail})" if detail else ""),
        )
    if walk.void > MAX_SPF_VOID_LOOKUPS:
        return Check(
            "spf",
            Status.FAIL,
            f"SPF at {domain} makes {walk.void} void DNS lookups (names with no record); "
            f"receivers allow {MAX_SPF_VOID_LOOKUPS} (RFC 7208 permerror)",
            "remove includes of names that no longer exist",
        )
    if walk.problems:
        return Check(
            "spf",
            Status.FAIL,
            f"SPF at {domain} is broken: {'; '.join(walk.problems[:3])} "
            "(RFC 7208 permerror): receivers ignore the record",
            "fix or remove those includes",
        )
    if all_term is None and not any(t.lower().startswith("redirect=") for t in terms):
        return Check(
            "spf",
            Status.WARN,
            f"SPF record at {domain} has no 'all' at the end: mail from other servers is neutral",
            f"end it with ~all or -all: {record} ~all",
        )
    if all_term == "?all":
        return Check(
            "spf",
            Status.WARN,
            f"SPF record at {domain} ends in ?all: it says nothing about other servers",
            "end it with ~all or -all",
        )
    return Check(
        "spf",
        Status.OK,
        f"SPF record at {domain}: {record} ({walk.lookups} of {MAX_SPF_LOOKUPS} DNS lookups)",
    )
