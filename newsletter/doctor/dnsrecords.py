"""SPF, DKIM and DMARC records of the From domain, read with dnspython.

The resolver is injectable (one server as HOST:PORT) and has short timeouts,
so the tests use a real local DNS server and an offline machine gets a clear
"DNS lookup failed" within seconds.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

import dns.exception
import dns.resolver
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from publicsuffixlist import PublicSuffixList

from newsletter.config import Settings
from newsletter.doctor.report import Check, Status
from newsletter.doctor.spf import (
    MAX_SPF_LOOKUPS,
    MAX_SPF_VOID_LOOKUPS,
    _spf_records,
    _SpfWalk,
    _walk_spf,
)
from newsletter.errors import ConfigError
from newsletter.mail.dkim import GeneratedKey, load_key, public_key_b64

DNS_TIMEOUT = 2.0  # seconds per server and try
DNS_LIFETIME = 4.0  # seconds per lookup, all tries included


def parse_dns_server(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or 'HOST' (port 53) -> (IP address, port)."""
    text = value.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"DNS server {value!r} is not HOST:PORT like 127.0.0.1:5353")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = str(socket.getaddrinfo(host, None)[0][4][0])
        except OSError:
            raise ConfigError(f"DNS server {value!r}: cannot resolve {host!r}") from None
    return str(host), int(port)


def make_resolver(server: str | None = None) -> dns.resolver.Resolver:
    """The system resolver, or one DNS server (HOST:PORT), both with short timeouts.

    Raises dns.resolver.NoResolverConfiguration when the system has no DNS set up.
    """
    if server:
        host, port = parse_dns_server(server)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = DNS_TIMEOUT
    resolver.lifetime = DNS_LIFETIME
    return resolver


class DnsFailure(Exception):
    """DNS itself failed (no answer, SERVFAIL...): we cannot tell whether a record exists."""


@dataclass
class TxtLookup:
    """TXT lookups that give up at once after the DNS server stopped answering."""

    resolver: dns.resolver.Resolver | None
    broken: str | None = None
    cache: dict[str, list[str]] = field(default_factory=dict)
    #: names answered NXDOMAIN (the name does not exist at all, not only its TXT)
    nxdomain: set[str] = field(default_factory=set)

    def txt(self, name: str) -> list[str]:
        """Every TXT record at `name`, strings joined; [] when there is none."""
        if name in self.cache:
            return self.cache[name]
        if self.broken is not None or self.resolver is None:
            raise DnsFailure(self.broken or "no DNS server configured (/etc/resolv.conf)")
        try:
            answer = self.resolver.resolve(name, "TXT", search=False)
        except dns.resolver.NXDOMAIN:
            records: list[str] = []
            self.nxdomain.add(name)
        except dns.resolver.NoAnswer:
            records = []
        except dns.exception.Timeout:
            self.broken = f"no answer from the DNS server within {self.resolver.lifetime:g}s"
            raise DnsFailure(self.broken) from None
        except dns.resolver.NoNameservers as exc:
            raise DnsFailure(f"every DNS server failed: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(str(exc) or exc.__class__.__name__) from None
        else:
            records = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        self.cache[name] = records
        return records


def _dns_failed(name: str, what: str, exc: DnsFailure) -> Check:
    return Check(
        name,
        Status.FAIL,
        f"DNS lookup failed for {what}: {exc}",
        "check the network and the DNS server (--dns-server HOST:PORT to ask another one)",
    )


def _tags(record: str) -> dict[str, str]:
    """'v=DKIM1; k=rsa; p=AB CD' -> {'v': 'DKIM1', 'k': 'rsa', 'p': 'AB CD'}."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


def check_spf(dns_lookup: TxtLookup, domain: str) -> Check:
    """RFC 7208: one `v=spf1` TXT record at the From domain, ending in ~all or -all.

    Its include: and redirect= are followed: more than 10 DNS lookups or 2 void
    lookups over the whole tree is a permanent error receivers act on.
    """
    try:
        found = dns_lookup.txt(domain)
    except DnsFailure as exc:
        return _dns_failed("spf", f"TXT {domain}", exc)
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
        return _dns_failed("spf", f"the includes of the SPF record at {domain}", exc)
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
    return next((r for r in found if "p" in _tags(r)), None)


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
        return _dns_failed("dkim", f"TXT {name}", exc)
    if record is None:
        return Check(
            "dkim",
            Status.FAIL,
            f"No DKIM record at {name}: receivers cannot verify our signatures; "
            "Gmail and Yahoo require DKIM for bulk senders",
            publish,
        )
    tags = _tags(record)
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
    if published != _published_key(_tags(expected))[0]:
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
        return _dns_failed("dmarc", f"TXT {name}", exc)
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
    tags = _tags(records[0])
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
