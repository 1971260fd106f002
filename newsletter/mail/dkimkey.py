"""DKIM keys: the signing key of the settings, parsed once and checked before anything is
sent, and a new key with the DNS record that publishes it (`newsletter dkim keygen`).

Only RSA keys of at least MIN_KEY_BITS: receivers ignore smaller ones (RFC 8301), and
Ed25519 (RFC 8463) alone is verified by few of them. `cryptography` (about 7 MB and
30 ms to import) is imported only by the functions that use a key: a send without DKIM
never loads it. Signing is dkim.py's.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.config import ENV_NAMES, Settings
from newsletter.errors import ConfigError, NewsletterError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

KEY_BITS = 2048
MIN_KEY_BITS = 1024  # RFC 8301: verifiers must not accept smaller keys


@dataclass(frozen=True)
class DkimKey:
    """A parsed RSA private key with the selector and domain it is published under."""

    private_key: rsa.RSAPrivateKey
    selector: str
    domain: str

    def sign(self, data: bytes) -> bytes:
        """The rsa-sha256 signature of `data` (PKCS#1 v1.5)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def __reduce__(self) -> tuple[object, ...]:
        # OpenSSL key objects do not pickle; a worker started by "spawn" re-parses once.
        from cryptography.hazmat.primitives import serialization

        der = self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (_key_from_der, (der, self.selector, self.domain))


def _key_from_der(der: bytes, selector: str, domain: str) -> DkimKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # __reduce__ above only ever writes RSA keys
        raise TypeError(f"a DKIM key passed between processes is {type(key).__name__}, not RSA")
    return DkimKey(key, selector, domain)


def _ascii_domain(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ConfigError(
            f"NEWSLETTER_FROM: the domain {domain!r} is not a valid DNS name"
        ) from None


def _kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519

    kinds = {
        ec.EllipticCurvePrivateKey: "EC",
        ed25519.Ed25519PrivateKey: "Ed25519",
        dsa.DSAPrivateKey: "DSA",
    }
    return next((label for cls, label in kinds.items() if isinstance(key, cls)), "non-RSA")


def load_key(settings: Settings) -> DkimKey | None:
    """The DKIM key of these settings, parsed once; None when signing is off.

    Call it before anything is sent: a half-configured or bad key is a ConfigError
    naming the setting, never a run that sends unsigned mail or stops halfway.
    """
    path, selector = settings.dkim_private_key, settings.dkim_selector
    key_env, selector_env = ENV_NAMES["dkim_private_key"], ENV_NAMES["dkim_selector"]
    if path is None and not selector:
        return None
    if path is None:
        raise ConfigError(f"{key_env} is not set, but {selector_env} is: DKIM signing needs both")
    if not selector:
        raise ConfigError(f"{selector_env} is not set, but {key_env} is: DKIM signing needs both")
    sender = settings.sender  # MissingSettings when NEWSLETTER_FROM is unset
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key_env}: no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{key_env}: cannot read {path} ({exc.strerror or exc})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{key_env}: {path} is protected by a passphrase; use an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{key_env}: {path} is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"{key_env}: {path} is a {_kind(key)} key, not RSA "
            "(make one with `newsletter dkim keygen`)"
        )
    if key.key_size < MIN_KEY_BITS:
        raise ConfigError(
            f"{key_env}: {path} is a {key.key_size}-bit RSA key; "
            f"receivers ignore keys under {MIN_KEY_BITS} bits (use {KEY_BITS})"
        )
    return DkimKey(key, selector, _ascii_domain(sender.domain))


@dataclass(frozen=True)
class GeneratedKey:
    """What `newsletter dkim keygen` prints: the DNS record to publish and the settings."""

    path: Path
    selector: str
    domain: str
    public_key_b64: str

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record_text(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_key_b64}"

    @property
    def txt_strings(self) -> list[str]:
        """The TXT value as DNS character-strings (at most 255 bytes each, RFC 1035)."""
        text = self.record_text
        return [text[i : i + 255] for i in range(0, len(text), 255)]

    @property
    def zone_line(self) -> str:
        quoted = " ".join(f'"{s}"' for s in self.txt_strings)
        return f"{self.record_name} TXT {quoted}"


def public_key_b64(key: rsa.RSAPublicKey) -> str:
    """The p= value: base64 of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def generate_key(path: Path, *, selector: str, domain: str) -> GeneratedKey:
    """Write a new 2048-bit RSA key (PEM, mode 0600); never overwrite an existing file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # "RSA PRIVATE KEY": read by every signer
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise NewsletterError(
            f"{path} already exists; not overwriting a key",
            hint="Choose another --out file, or remove the old key once DNS no longer uses it.",
        ) from None
    except OSError as exc:
        raise NewsletterError(f"cannot create {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask
        out.write(pem)
    return GeneratedKey(path, selector, _ascii_domain(domain), public_key_b64(key.public_key()))
