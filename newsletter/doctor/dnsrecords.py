"""The DNS lookups the SPF, DKIM and DMARC checks share, read with dnspython.

The resolver is injectable (one server as HOST:PORT) and has short timeouts,
so the tests use a real local DNS server and an offline machine gets a clear
"DNS lookup failed" within seconds. Each record's verdict lives in its own
module: spf.py, dkim.py, dmarc.py.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

import dns.exception
import dns.resolver

from newsletter.doctor.report import Check, Status
from newsletter.errors import ConfigError

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


def dns_failed(name: str, what: str, exc: DnsFailure) -> Check:
    """The check `name` failed because DNS did not answer for `what`."""
    return Check(
        name,
        Status.FAIL,
        f"DNS lookup failed for {what}: {exc}",
        "check the network and the DNS server (--dns-server HOST:PORT to ask another one)",
    )


def record_tags(record: str) -> dict[str, str]:
    """'v=DKIM1; k=rsa; p=AB CD' -> {'v': 'DKIM1', 'k': 'rsa', 'p': 'AB CD'}."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip())
    return tags
