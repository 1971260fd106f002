"""Address normal form, identity key, validation reasons, and the per-domain fast path."""

from __future__ import annotations

import unicodedata

import pytest
from email_validator import EmailNotValidError, validate_email

from newsletter.addresses import (
    AddressError,
    NormalisedAddress,
    clean_name,
    email_hash,
    normalise_address,
)
from newsletter.errors import SubscriberError


def test_trims_lowercases_domain_keeps_local_spelling() -> None:
    addr = normalise_address("  Maria.Lopez@Example.ORG \t")
    assert addr == NormalisedAddress("Maria.Lopez@example.org", "maria.lopez@example.org")


def test_same_key_whatever_the_case() -> None:
    keys = {normalise_address(a).key for a in ("a.b@x.org", "A.B@X.ORG", " a.B@x.Org ")}
    assert keys == {"a.b@x.org"}


def test_idna_domain_and_nfc() -> None:
    composed = normalise_address("info@bücher.example")
    decomposed = normalise_address(unicodedata.normalize("NFD", "Info@BÜCHER.example"))
    assert composed.email == "info@xn--bcher-kva.example"
    assert composed.key == decomposed.key


def test_non_ascii_local_part_is_refused_with_a_clear_reason() -> None:
    with pytest.raises(AddressError) as err:
        normalise_address("josé@example.org")
    assert "SMTPUTF8" in err.value.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "no email address"),
        ("   ", "no email address"),
        ("no-at.example.org", "no @ sign"),
        ("tom@example", "period"),
        ("a..b@example.org", "two periods"),
        ("has space@example.org", "SPACE"),
        ("x@localhost", "period"),
        ('"quoted"@example.org', "Quoting"),
        ("a" * 65 + "@example.org", "64"),
    ],
)
def test_reasons(raw: str, reason: str) -> None:
    with pytest.raises(AddressError) as err:
        normalise_address(raw)
    assert reason in err.value.reason
    assert isinstance(err.value, SubscriberError)  # one hierarchy: the CLI prints it


SAMPLES = [
    "plain@example.org", "Mixed.Case@Example.COM", "o'brien@example.com", "+tag@example.org",
    "-dash@example.org", "x@sub.domain.example.co.uk", "a@b.c", "a@-bad.example",
    "a@bad-.example", "a@exa_mple.org", "a@123.example", "a@xn--bcher-kva.example",
    "a.@example.org", ".a@example.org", "a@" + "l" * 64 + ".example", "a@example..org",
    "a@[127.0.0.1]", "a@test.invalid", "a@foo.local", "x" * 64 + "@" + "d" * 60 + ".example",
]  # fmt: skip


@pytest.mark.parametrize("raw", SAMPLES)
def test_fast_path_agrees_with_email_validator(raw: str) -> None:
    """The cached per-domain path accepts exactly what email-validator accepts."""
    try:
        info = validate_email(raw, allow_smtputf8=False, check_deliverability=False)
        expected: str | None = f"{info.ascii_local_part}@{info.ascii_domain}"
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalise_address(raw).email
    except AddressError:
        got = None
    assert got == expected


def test_email_hash_is_sha256_of_the_key() -> None:
    digest = email_hash("a@example.org")
    assert len(digest) == 64 and digest == email_hash("a@example.org")
    assert "a@example.org" not in digest


def test_clean_name() -> None:
    assert clean_name("  Ana\r\nSilva\x00 ") == "Ana Silva"
    assert clean_name("") is None and clean_name("   ") is None and clean_name(None) is None
    assert clean_name("Rene\u0301e") == "Renée"
    assert len(clean_name("x" * 500) or "") == 200
