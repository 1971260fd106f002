"""Fixtures shared by the doctor tests: PEM keys and one dnsmasq serving good, missing and
broken SPF, DKIM and DMARC records."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.dnsserver import DNSServer, unavailable_reason
from tests.support.helpers import dkim_record, key_pem


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: our 2048-bit RSA key, another one, an Ed25519 key."""
    folder = tmp_path_factory.mktemp("keys")
    made: dict[str, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = {
        "ours": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    paths = {}
    for name, key in made.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(key_pem(key))
    return paths


def _pkcs1_record(path: Path) -> str:
    """The same RSA key as a PKCS#1 RSAPublicKey p= (some DNS hosts publish that form)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@pytest.fixture(scope="module")
def dns_server(keys: dict[str, Path]) -> Iterator[DNSServer]:
    """One dnsmasq for the module, serving good, missing and broken configurations."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    ours, other, ed = (dkim_record(keys[n]) for n in ("ours", "other", "ed"))
    records: dict[str, str | list[str]] = {
        # good: everything right
        "good.test": ["v=spf1 ip4:192.0.2.10 include:_spf.provider.test ~all", "site-verify=1"],
        "_spf.provider.test": "v=spf1 ip4:198.51.100.0/24 -all",
        "news._domainkey.good.test": ours,
        "pkcs1._domainkey.good.test": _pkcs1_record(keys["ours"]),
        "ed._domainkey.good.test": ed,
        "trial._domainkey.good.test": ours + "; t=y",
        "_dmarc.good.test": "v=DMARC1; p=quarantine; rua=mailto:dmarc@good.test",
        # bare: the domain exists, no SPF, DKIM or DMARC
        "bare.test": "site-verify=2",
        # broken: two SPF records, the wrong DKIM key, a DMARC record without policy
        "broken.test": ["v=spf1 -all", "v=spf1 include:other.test -all"],
        "news._domainkey.broken.test": other,
        "cut._domainkey.broken.test": ours[:200],
        "gone._domainkey.broken.test": "v=DKIM1; k=rsa; p=",
        "_dmarc.broken.test": "v=DMARC1; rua=mailto:d@broken.test",
        # lax: SPF +all, no all, DMARC p=none without reports
        "lax.test": "v=spf1 +all",
        "noall.test": "v=spf1 ip4:192.0.2.10",
        "_dmarc.lax.test": "v=DMARC1; p=none",
    }
    with DNSServer(records) as server:
        yield server
