"""Address normal form, identity key, validation reasons, and the per-domain fast path."""

from __future__ import annotations

import importlib
import unicodedata
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser

import email_validator
import pytest
from email_validator import EmailNotValidError, validate_email

from newsletter.errors import SubscriberError
from newsletter.mail.addresses import (
    AddressError,
    NormalisedAddress,
    clean_name,
    email_hash,
    normalise_address,
)


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


ENCODED_NAMES = [
    ("=?utf-8?b?DQo=?=", None),  # CR LF alone
    ("Ana =?utf-8?q?Silva=0D=0ABcc:_x@example.org?=", "Ana Silva Bcc: x@example.org"),
    ("=?utf-8?b?PT91dGYtOD9iP0RRbz0/PQ==?=", None),  # a word that decodes to another word
    ("=?utf-8?q?a=E2=80=A8b=C2=85c?=", "a b c"),  # U+2028 and NEL
    ("=?bogus-charset?q?x?= =?utf-8?b?DQo=?=Eve", "\ufffd Eve"),  # one bad word, one CR LF
    ("=?utf-8?q?Ren=C3=A9e?= =?iso-8859-1?q?_M=FCller?=", "Renée Müller"),
    ("=?UTF-8?B?" + "QUFB" * 100 + "?=", "A" * 200),  # decoded, then capped
    ("Plain =? not a word ?=", "Plain =? not a word ?="),
]


@pytest.mark.parametrize(("raw", "expected"), ENCODED_NAMES)
def test_clean_name_decodes_encoded_words_then_cleans(raw: str, expected: str | None) -> None:
    """Issue 11.11: a name that is an encoded-word for CR/LF must not reach `To:` as is."""
    assert clean_name(raw) == expected


@pytest.mark.parametrize("raw", [raw for raw, _ in ENCODED_NAMES])
def test_cleaned_name_makes_a_to_header_that_parses(raw: str) -> None:
    """The stored name, put in `To:` and read back by Python's parser, gives one recipient."""
    msg = EmailMessage()
    msg["To"] = Address(display_name=clean_name(raw) or "", addr_spec="ana@example.org")
    msg.set_content("x")
    parsed = BytesParser(policy=policy.default).parsebytes(msg.as_bytes(policy=policy.SMTP))
    to = parsed["To"]
    assert len(to.addresses) == 1 and to.addresses[0].addr_spec == "ana@example.org"
    assert not any(c in to.addresses[0].display_name for c in "\r\n\u2028\x85")


def test_email_validator_internals_are_where_addresses_py_expects() -> None:
    """addresses.py imports two names outside email-validator's public API (pinned <3).

    If this fails, email-validator moved them: adapt addresses.py (the domain fast
    path) before raising the pin in pyproject.toml.
    """
    syntax = importlib.import_module("email_validator.syntax")
    names = ("DOT_ATOM_TEXT", "validate_email_domain_name")
    moved = [name for name in names if not hasattr(syntax, name)]
    assert not moved, (
        f"email_validator.syntax no longer has {', '.join(moved)} "
        f"(email-validator {email_validator.__version__}): addresses.py's fast path must change"
    )
    dot_atom, validate_domain = syntax.DOT_ATOM_TEXT, syntax.validate_email_domain_name
    assert dot_atom.match("ana.silva") and not dot_atom.match("ana silva"), (
        "email_validator.syntax.DOT_ATOM_TEXT no longer matches a dot-atom local part"
    )
    info = validate_domain("Bücher.example")
    assert info["ascii_domain"] == "xn--bcher-kva.example", (
        "validate_email_domain_name no longer returns {'ascii_domain': ...}"
    )
    with pytest.raises(EmailNotValidError):
        validate_domain("-bad-.example")
