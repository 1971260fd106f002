"""SPF lookup counting: follow a record's include: and redirect= (RFC 7208 4.6.4).

`check_spf` (in dnsrecords) turns what this finds into the doctor's verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol


class TxtSource(Protocol):
    """What the walk needs of a lookup: dnsrecords.TxtLookup (raising its DnsFailure)."""

    def txt(self, name: str) -> list[str]: ...


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


def _walk_spf(dns_lookup: TxtSource, record: str, walk: _SpfWalk, path: tuple[str, ...]) -> None:
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
