"""`newsletter doctor`: DNS checks against a real dnsmasq, SMTP checks against a real
aiosmtpd, and the command as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.doctor import Check, DoctorReport, Status, load_settings_leniently, run_doctor
from newsletter.doctor.dkim import check_dkim
from newsletter.doctor.dmarc import check_dmarc
from newsletter.doctor.dnsrecords import TxtLookup, make_resolver
from newsletter.doctor.local import check_base_url, check_outbox
from newsletter.doctor.smtp import check_smtp
from newsletter.doctor.spf import check_spf
from newsletter.settingvalues import parse_smtp_url
from tests.support.dnsserver import DNSServer
from tests.support.helpers import dkim_record, silent_udp_port
from tests.support.smtpserver import SMTPServer

MakeServer = Callable[..., SMTPServer]


@pytest.fixture
def lookup(dns_server: DNSServer) -> TxtLookup:
    return TxtLookup(make_resolver(dns_server.address))


# ---- SPF, DKIM, DMARC against the real DNS server ---------------------------------


def dkim(lookup: TxtLookup, domain: str, selector: str | None, key: Path | None) -> Check:
    """check_dkim with settings as a user would set them."""
    env = {"NEWSLETTER_FROM": f"news@{domain}"}
    if selector:
        env["NEWSLETTER_DKIM_SELECTOR"] = selector
    if key:
        env["NEWSLETTER_DKIM_PRIVATE_KEY"] = str(key)
    return check_dkim(lookup, load_settings(env, Path(os.devnull)))


def test_good_spf_dkim_dmarc(lookup: TxtLookup, keys: dict[str, Path]) -> None:
    spf = check_spf(lookup, "good.test")
    assert spf.status is Status.OK and "include:_spf.provider.test ~all" in spf.summary
    check = dkim(lookup, "good.test", "news", keys["ours"])
    assert check.status is Status.OK, check
    assert check.summary == (
        "DKIM record at news._domainkey.good.test: rsa 2048-bit key, "
        "matches NEWSLETTER_DKIM_PRIVATE_KEY"
    )
    dmarc = check_dmarc(lookup, "good.test")
    assert dmarc.status is Status.OK and "policy quarantine" in dmarc.summary
    assert dmarc.hint is None


def test_dkim_public_key_compared_with_the_private_key(
    lookup: TxtLookup, keys: dict[str, Path]
) -> None:
    # the same RSA key published as PKCS#1 instead of SubjectPublicKeyInfo still matches
    assert dkim(lookup, "good.test", "pkcs1", keys["ours"]).status is Status.OK
    # our key against records published for another key
    for domain, selector in (("broken.test", "news"), ("good.test", "ed")):
        wrong = dkim(lookup, domain, selector, keys["ours"])
        assert wrong.status is Status.FAIL, wrong
        assert "does not match NEWSLETTER_DKIM_PRIVATE_KEY" in wrong.summary
        assert wrong.hint and dkim_record(keys["ours"]) in wrong.hint  # what to publish instead
    assert dkim(lookup, "good.test", "news", keys["other"]).status is Status.FAIL


def test_dkim_problems_in_plain_words(
    lookup: TxtLookup, keys: dict[str, Path], tmp_path: Path
) -> None:
    missing = dkim(lookup, "bare.test", "news", keys["ours"])
    assert missing.status is Status.FAIL
    assert missing.summary.startswith("No DKIM record at news._domainkey.bare.test")
    assert missing.hint == f"publish TXT news._domainkey.bare.test: {dkim_record(keys['ours'])}"
    cut = dkim(lookup, "broken.test", "cut", keys["ours"])
    assert cut.status is Status.FAIL and "holds no valid public key" in cut.summary
    revoked = dkim(lookup, "broken.test", "gone", keys["ours"])
    assert revoked.status is Status.FAIL and "revoked" in revoked.summary
    trial = dkim(lookup, "good.test", "trial", keys["ours"])
    assert trial.status is Status.WARN and "t=y" in trial.summary
    off = dkim(lookup, "good.test", None, None)
    assert off.status is Status.WARN and off.summary.startswith("DKIM signing is off")
    # what `newsletter send` would refuse, doctor reports as FAIL (the same check)
    for selector, key in (("news", None), (None, keys["ours"])):
        half = dkim(lookup, "good.test", selector, key)
        assert half.status is Status.FAIL and "DKIM signing needs both" in half.summary
    (tmp_path / "bad.pem").write_text("not a key")
    bad = dkim(lookup, "good.test", "news", tmp_path / "bad.pem")
    assert bad.status is Status.FAIL and "is not a PEM private key" in bad.summary
    ed = dkim(lookup, "good.test", "ed", keys["ed"])
    assert ed.status is Status.FAIL and "not RSA" in ed.summary
    gone = dkim(lookup, "good.test", "news", tmp_path / "nope.pem")
    assert gone.status is Status.FAIL and "no such file" in gone.summary


def test_spf_problems_in_plain_words(lookup: TxtLookup) -> None:
    bare = check_spf(lookup, "bare.test")
    assert bare.status is Status.FAIL and bare.summary.startswith("No SPF record at bare.test")
    two = check_spf(lookup, "broken.test")
    assert two.status is Status.FAIL and "2 SPF records" in two.summary
    lax = check_spf(lookup, "lax.test")
    assert lax.status is Status.FAIL and "+all" in lax.summary
    assert check_spf(lookup, "noall.test").status is Status.WARN
    ghost = check_spf(lookup, "ghost.test")
    assert ghost.status is Status.FAIL and "does not exist in DNS" in ghost.summary


def test_dmarc_problems_in_plain_words(lookup: TxtLookup) -> None:
    bare = check_dmarc(lookup, "bare.test")
    assert bare.status is Status.FAIL
    assert bare.summary == (
        "No DMARC record at _dmarc.bare.test: Gmail and Yahoo require one for bulk senders"
    )
    assert bare.hint and bare.hint.startswith("publish e.g. v=DMARC1; p=none; rua=mailto:")
    nopolicy = check_dmarc(lookup, "broken.test")
    assert nopolicy.status is Status.FAIL and "no valid policy" in nopolicy.summary
    lax = check_dmarc(lookup, "lax.test")
    assert lax.status is Status.OK and "p=none only monitors" in (lax.hint or "")
    assert "rua=mailto:" in (lax.hint or "")
    # a subdomain without its own record inherits the parent domain's policy
    sub = check_dmarc(lookup, "news.good.test")
    assert sub.status is Status.OK and "_dmarc.good.test (inherited by news.good.test)" in (
        sub.summary
    )


def test_dns_that_does_not_answer_fails_fast_and_clearly() -> None:
    with silent_udp_port() as sock:
        resolver = make_resolver(f"127.0.0.1:{sock.getsockname()[1]}")
        resolver.lifetime = 1.0
        lookup = TxtLookup(resolver)
        started = time.monotonic()
        checks = [check_spf(lookup, "good.test"), check_dmarc(lookup, "good.test")]
        elapsed = time.monotonic() - started
    assert elapsed < 3  # the second lookup gives up at once
    for check in checks:
        assert check.status is Status.FAIL
        assert check.summary.startswith("DNS lookup failed for TXT ")


# ---- SMTP against the real server -------------------------------------------------


def _smtp(server: SMTPServer, url: str | None = None, **kwargs: object) -> object:
    ctx = server.client_ssl_context() if server.tls else None
    return check_smtp(
        parse_smtp_url(url or server.url),
        ssl_context=ctx,
        timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )


def test_smtp_plain_reports_greeting_and_extensions_and_sends_nothing(
    smtp_server: SMTPServer,
) -> None:
    check = _smtp(smtp_server, mail_from="news@good.test")
    assert check.status is Status.OK, check
    summary = check.summary
    assert 'greeting "220 ' in summary and "newsletter-test-smtpd" in summary
    assert "STARTTLS no, PIPELINING yes, SIZE 10.5 MB" in summary
    assert "accepts MAIL FROM:<news@good.test>" in summary
    assert smtp_server.messages == [] and smtp_server.transactions == 1


def test_smtp_starttls_and_auth(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(tls="starttls", auth=("news", "s3cret"), pipelining=False)
    check = _smtp(server, mail_from="news@good.test")
    assert check.status is Status.OK, check
    assert "STARTTLS yes, PIPELINING no" in check.summary
    assert "logged in as news" in check.summary
    implicit = make_smtp_server(tls="implicit", auth=("news", "s3cret"))
    assert _smtp(implicit).status is Status.OK


def test_smtp_failures_say_why(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(tls="starttls", auth=("news", "s3cret"))
    wrong = _smtp(server, server.url.replace("s3cret", "nope"))
    assert wrong.status is Status.FAIL
    assert "login refused for 'news': 535" in wrong.summary
    assert "nothing was sent" in wrong.hint
    untrusted = check_smtp(parse_smtp_url(server.url), timeout=5)
    assert "TLS certificate not trusted" in untrusted.summary
    anonymous = _smtp(server, f"smtp+starttls://{server.host}:{server.port}", mail_from="a@b.test")
    assert anonymous.status is Status.FAIL and "refused: 530" in anonymous.summary
    plain = make_smtp_server()
    no_tls = _smtp(plain, f"smtp+starttls://{plain.host}:{plain.port}")
    assert "does not offer STARTTLS" in no_tls.summary
    tls_on_plain = _smtp(plain, f"smtps://{plain.host}:{plain.port}")
    assert "TLS failed" in tls_on_plain.summary
    down = make_smtp_server()
    url = down.url
    down.stop()
    refused = _smtp(down, url)
    assert refused.status is Status.FAIL and "connection refused" in refused.summary


# ---- settings, base URL, outbox ---------------------------------------------------


def test_malformed_and_missing_settings_are_reported_not_raised(tmp_path: Path) -> None:
    env = {
        "NEWSLETTER_FROM": "news@good.test",
        "NEWSLETTER_SMTP_URL": "ftp://nope",
        "NEWSLETTER_SMTP_TIMEOUT": "soon",
        "NEWSLETTER_OUTBOX": str(tmp_path / "outbox"),
    }
    settings, errors = load_settings_leniently(env, tmp_path / "no.env")
    assert set(errors) == {"NEWSLETTER_SMTP_URL", "NEWSLETTER_SMTP_TIMEOUT"}
    with silent_udp_port() as sock:
        resolver = make_resolver(f"127.0.0.1:{sock.getsockname()[1]}")
        resolver.lifetime = 0.5
        report = run_doctor(settings, config_errors=errors, resolver=resolver)
    first = report.checks[0]
    assert first.status is Status.FAIL
    assert "malformed NEWSLETTER_SMTP_URL" in first.summary
    assert "malformed NEWSLETTER_SMTP_TIMEOUT" in first.summary
    assert "missing for `newsletter send`: NEWSLETTER_FEED_URL, NEWSLETTER_POSTAL_ADDRESS" in (
        first.summary
    )
    smtp = next(c for c in report.checks if c.name == "smtp")
    assert smtp.status is Status.WARN and "NEWSLETTER_SMTP_URL is malformed" in smtp.summary


def test_base_url_and_outbox(tmp_path: Path) -> None:
    def base(url: str) -> Status:
        env = {"NEWSLETTER_BASE_URL": url}
        return check_base_url(load_settings(env, tmp_path / "no.env")).status

    assert base("https://news.good.test") is Status.OK
    assert base("http://news.good.test") is Status.WARN
    assert base("https://localhost:8000") is Status.WARN
    writable = check_outbox(tmp_path / "outbox")
    assert writable.status is Status.WARN and "will be created" in writable.summary
    (tmp_path / "outbox").mkdir()
    assert "(writable)" in check_outbox(tmp_path / "outbox").summary
    assert list((tmp_path / "outbox").iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    assert check_outbox(tmp_path / "file").status is Status.FAIL
    assert check_outbox(tmp_path / "file" / "outbox").status is Status.FAIL


def test_report_ok_ignores_warnings() -> None:
    assert DoctorReport((Check("a", Status.OK, "x"), Check("b", Status.WARN, "y"))).ok
    assert not DoctorReport((Check("a", Status.FAIL, "x"),)).ok
