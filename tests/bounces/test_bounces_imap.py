"""`newsletter bounces fetch` against a real Dovecot IMAP server over TLS (support/imapserver)."""

from __future__ import annotations

import imaplib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from newsletter.bounces.record import MAX_MESSAGE_BYTES
from tests.support.bouncesite import EXPECTED, FIXTURES, MB, Site, big_bounce, cli, report_numbers
from tests.support.imapserver import PASSWORD, DovecotServer, unavailable_reason


@pytest.fixture
def dovecot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DovecotServer]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = DovecotServer(tmp_path).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))  # trust the test CA only
    try:
        yield server
    finally:
        server.stop()


def _subjects(messages: list[bytes]) -> list[str]:
    return sorted(
        line.split(b":", 1)[1].strip().decode()
        for raw in messages
        for line in raw.splitlines()
        if line.startswith(b"Subject:")
    )


def test_fetch_processes_the_mailbox_and_moves_the_reports(
    site: Site, dovecot: DovecotServer
) -> None:
    person = (FIXTURES / "person-reply.eml").read_bytes()
    dovecot.add([*site.filled_reports(), person])

    result = cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=dovecot.url)

    assert result.exit_code == 0, result.output + dovecot.log_text()
    numbers = report_numbers(result.output)
    assert numbers["processed"] == 10 and numbers["suppressed now"] == 5
    assert numbers["hard bounces"] == 6 and numbers["complaints"] == 1
    assert "not bounce reports: 1" in result.output
    assert "moved to the processed folder: 10" in result.output
    for name, (_kind, email, status) in EXPECTED.items():
        if email is not None:
            assert site.status(email) == status, name
    # the person's message stays for a person; every report went to Processed
    assert _subjects(dovecot.messages()) == _subjects([person])
    assert len(dovecot.messages("Processed")) == 10

    again = cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=dovecot.url)
    assert again.exit_code == 0, again.output
    assert report_numbers(again.output)["processed"] == 0
    assert "moved to the processed folder: 0" in again.output
    assert len(dovecot.messages()) == 1 and len(dovecot.messages("Processed")) == 10


def test_a_report_seen_before_is_moved_without_counting_again(
    site: Site, dovecot: DovecotServer
) -> None:
    raw = site.fill("postfix-user-unknown.eml")
    dovecot.add([raw])
    assert cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=dovecot.url).exit_code == 0
    dovecot.add([raw])  # delivered twice, e.g. by a retrying MTA

    result = cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=dovecot.url)

    assert "1 already seen" in result.output and report_numbers(result.output)["processed"] == 0
    assert dovecot.messages() == [] and len(dovecot.messages("Processed")) == 2


def test_an_untrusted_certificate_is_refused(
    site: Site, dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    dovecot.add([site.fill("postfix-user-unknown.eml")])

    result = cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=dovecot.url)

    assert result.exit_code == 1
    assert "certificate" in result.output and "Traceback" not in result.output
    assert len(dovecot.messages()) == 1 and site.status("gone.postfix@example.org") == "active"


def test_a_wrong_password_is_a_clean_error(site: Site, dovecot: DovecotServer) -> None:
    url = dovecot.url.replace(PASSWORD.replace(" ", "%20"), "wrong-secret")
    result = cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=url)
    assert result.exit_code == 1
    assert "refused the login" in result.output and "wrong-secret" not in result.output


def test_fetch_without_the_setting_names_it(site: Site) -> None:
    result = cli(site, "bounces", "fetch")
    assert result.exit_code == 1 and "NEWSLETTER_BOUNCE_IMAP_URL" in result.output


def test_a_message_over_the_size_cap_is_never_fetched_and_stays(
    site: Site, dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC822.SIZE is asked first: the body of an 11 MB message is never downloaded."""
    dovecot.add([site.fill("postfix-user-unknown.eml"), big_bounce(MAX_MESSAGE_BYTES + MB)])
    fetched: list[str] = []
    real_uid = imaplib.IMAP4.uid

    def spy(self: imaplib.IMAP4, command: str, *args: object) -> tuple[str, list[object]]:
        if command.upper() == "FETCH" and "BODY" in str(args[-1]).upper():
            fetched.append(str(args[0]))
        return real_uid(self, command, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(imaplib.IMAP4, "uid", spy)

    result = cli(site, "bounces", "fetch", NEWSLETTER_BOUNCE_IMAP_URL=dovecot.url)

    assert result.exit_code == 0, result.output + dovecot.log_text()
    assert report_numbers(result.output)["processed"] == 1
    assert "too large: 1" in result.output and "not read" in result.output
    assert len(fetched) == 1  # the small report's body only
    assert site.status("gone.postfix@example.org") == "bounced"
    left = dovecot.messages()
    assert len(left) == 1 and len(left[0]) > MAX_MESSAGE_BYTES  # left for a person
