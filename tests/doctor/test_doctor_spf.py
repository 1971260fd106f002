"""`newsletter doctor` on SPF lookup limits and DMARC organisational domains (real dnsmasq).

RFC 7208 4.6.4: a receiver evaluating SPF stops with a permanent error after
10 DNS-querying terms (include, a, mx, ptr, exists, redirect) across the whole
include tree, or after 2 void lookups; such a record protects nothing.
RFC 7489 3.2: DMARC falls back to the organisational domain, found with the
Public Suffix List (news.example.co.uk -> example.co.uk, not co.uk).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from newsletter.doctor.dmarc import check_dmarc, organisational_domain
from newsletter.doctor.dnsrecords import TxtLookup, make_resolver
from newsletter.doctor.report import Status
from newsletter.doctor.spf import check_spf
from tests.support.dnsserver import DNSServer, unavailable_reason

RECORDS: dict[str, str | list[str]] = {
    # 12 lookups: 3 at the top, 4 in one include, 3 in the other and 2 one level further down
    "heavy.test": "v=spf1 mx include:_spf1.heavy.test include:_spf2.heavy.test -all",
    "_spf1.heavy.test": "v=spf1 a mx ptr exists:%{i}.x.heavy.test ip4:192.0.2.0/24 -all",
    "_spf2.heavy.test": "v=spf1 a:mail.heavy.test mx:mx.heavy.test include:_spf3.heavy.test ~all",
    "_spf3.heavy.test": "v=spf1 a/24 mx/24 -all",
    # exactly 10: accepted, and the count is shown
    "ten.test": "v=spf1 a mx include:_spf.ten.test -all",
    "_spf.ten.test": "v=spf1 a mx ptr exists:x.test a:b.test mx:c.test a:d.test ~all",
    # redirect= is followed and counted; exp= and ip4: are not lookups
    "redir.test": "v=spf1 redirect=_spf.heavy.test",
    "_spf.heavy.test": "v=spf1 include:_spf1.heavy.test include:_spf2.heavy.test exp=e.test -all",
    # an include loop must end (and is itself an error)
    "loop.test": "v=spf1 include:_a.loop.test -all",
    "_a.loop.test": "v=spf1 include:_b.loop.test -all",
    "_b.loop.test": "v=spf1 include:_a.loop.test -all",
    "self.test": "v=spf1 include:self.test -all",
    # includes of names that do not exist: void lookups (and each a permerror)
    "void.test": "v=spf1 include:gone1.test include:gone2.test include:gone3.test -all",
    "noinclude.test": "v=spf1 include:_spf.bare.test -all",
    "_spf.bare.test": "site-verification=1",
    "fine.test": "v=spf1 ip4:192.0.2.10 include:_spf.fine.test -all",
    "_spf.fine.test": "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 -all",
}
UK_RECORDS: dict[str, str | list[str]] = {
    "_dmarc.example.co.uk": "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.co.uk",
    "_dmarc.co.uk": "v=DMARC1; p=none",  # a wrong fallback would find this one
    "_dmarc.other.co.uk": "v=DMARC1; p=reject",
}


def _server(records: dict[str, str | list[str]], zones: tuple[str, ...]) -> Iterator[DNSServer]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with DNSServer(records, zones=zones) as server:
        yield server


@pytest.fixture(scope="module")
def lookup_server() -> Iterator[DNSServer]:
    yield from _server(RECORDS, ("test",))


@pytest.fixture
def lookup(lookup_server: DNSServer) -> TxtLookup:
    return TxtLookup(make_resolver(lookup_server.address))


def test_twelve_lookups_through_nested_includes_fail_with_the_count(lookup: TxtLookup) -> None:
    spf = check_spf(lookup, "heavy.test")
    assert spf.status is Status.FAIL
    assert spf.summary.startswith("SPF needs 12 DNS lookups; receivers allow 10")
    assert spf.hint and "include:_spf1.heavy.test needs 5" in spf.hint
    assert "include:_spf2.heavy.test needs 6" in spf.hint


def test_ten_lookups_pass_and_the_count_is_reported(lookup: TxtLookup) -> None:
    spf = check_spf(lookup, "ten.test")
    assert spf.status is Status.OK and spf.summary.endswith("(10 of 10 DNS lookups)")
    fine = check_spf(lookup, "fine.test")
    assert fine.status is Status.OK and fine.summary.endswith("(1 of 10 DNS lookups)")


def test_redirect_is_followed_and_counted(lookup: TxtLookup) -> None:
    spf = check_spf(lookup, "redir.test")
    assert spf.status is Status.FAIL
    assert spf.summary.startswith("SPF needs 12 DNS lookups")  # 1 redirect + (1 + 4) + (1 + 3 + 2)


@pytest.mark.parametrize("domain", ["loop.test", "self.test"])
def test_include_loops_end_and_are_reported(lookup: TxtLookup, domain: str) -> None:
    spf = check_spf(lookup, domain)
    assert spf.status is Status.FAIL and "loops back" in spf.summary


def test_includes_of_missing_names_are_void_lookups(lookup: TxtLookup) -> None:
    spf = check_spf(lookup, "void.test")
    assert spf.status is Status.FAIL
    assert spf.summary.startswith("SPF at void.test makes 3 void DNS lookups")
    assert "receivers allow 2" in spf.summary
    missing = check_spf(lookup, "noinclude.test")
    assert missing.status is Status.FAIL
    assert "include:_spf.bare.test has no SPF record" in missing.summary


# ---- DMARC: the organisational domain from the Public Suffix List ---------------------


@pytest.mark.parametrize(
    ("domain", "organisational"),
    [
        ("news.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("a.b.endseclusion.org", "endseclusion.org"),
        ("news.good.test", "good.test"),  # an unknown TLD: the last two labels
        ("News.Example.CO.UK.", "example.co.uk"),
    ],
)
def test_organisational_domain(domain: str, organisational: str) -> None:
    assert organisational_domain(domain) == organisational


@pytest.fixture(scope="module")
def uk_server() -> Iterator[DNSServer]:
    yield from _server(UK_RECORDS, ("uk",))


def test_dmarc_of_a_subdomain_under_co_uk_is_found_at_the_registered_domain(
    uk_server: DNSServer,
) -> None:
    lookup = TxtLookup(make_resolver(uk_server.address))
    dmarc = check_dmarc(lookup, "news.example.co.uk")
    assert dmarc.status is Status.OK
    assert dmarc.summary == (
        "DMARC record at _dmarc.example.co.uk (inherited by news.example.co.uk): policy quarantine"
    )
    # the registered domain itself uses its own record, never the suffix's
    assert "policy reject" in check_dmarc(lookup, "example.co.uk").summary
    missing = check_dmarc(lookup, "news.missing.co.uk")
    assert missing.status is Status.FAIL and "_dmarc.news.missing.co.uk" in missing.summary
