"""`newsletter doctor` as a user runs it: a real subprocess against a real dnsmasq and a real
aiosmtpd, its one line per check and its exit codes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.dnsserver import DNSServer
from tests.support.helpers import BASE_ENV, run_cli, silent_udp_port
from tests.support.smtpserver import SMTPServer

MakeServer = Callable[..., SMTPServer]


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cwd, "doctor", *args, timeout=60, **env)


def _lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """{check name: its line}; every line but the last is one check."""
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("doctor: ") and "nothing was sent" in lines[-1]
    checks = {}
    for line in lines[:-1]:
        status, name, _ = line.split(maxsplit=2)
        assert status in ("OK", "WARN", "FAIL"), line
        checks[name] = line
    assert len(checks) == len(lines) - 1
    return checks


def _env(dns_server: DNSServer, **extra: str) -> dict[str, str]:
    return {
        **BASE_ENV,
        "NEWSLETTER_FEED_URL": "https://good.test/feed/",
        "NEWSLETTER_FROM": "News <news@good.test>",
        "NEWSLETTER_DNS_SERVER": dns_server.address,
        **extra,
    }


def test_cli_all_good_exits_0(
    tmp_path: Path, dns_server: DNSServer, keys: dict[str, Path], make_smtp_server: MakeServer
) -> None:
    server = make_smtp_server(tls="starttls", auth=("news", "s3cret"))
    env = _env(
        dns_server,
        NEWSLETTER_SMTP_URL=server.url,
        NEWSLETTER_DKIM_SELECTOR="news",
        NEWSLETTER_DKIM_PRIVATE_KEY=str(keys["ours"]),
        SSL_CERT_FILE=str(server.ca_file),
    )
    result = run(tmp_path, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _lines(result)
    assert list(checks) == ["settings", "base-url", "smtp", "spf", "dkim", "dmarc"]
    assert all(line.startswith("OK ") for line in checks.values()), result.stdout
    assert "logged in as news" in checks["smtp"]
    assert server.messages == []


def test_cli_missing_records_and_smtp_down_exit_1(
    tmp_path: Path, dns_server: DNSServer, make_smtp_server: MakeServer
) -> None:
    down = make_smtp_server()
    url = down.url
    down.stop()
    env = _env(dns_server, NEWSLETTER_FROM="news@bare.test", NEWSLETTER_SMTP_URL=url)
    env.pop("NEWSLETTER_DNS_SERVER")
    result = run(tmp_path, "--dns-server", dns_server.address, **env)
    assert result.returncode == 1
    checks = _lines(result)
    assert checks["smtp"].startswith("FAIL") and "connection refused" in checks["smtp"]
    assert checks["spf"].startswith("FAIL  spf       No SPF record at bare.test")
    assert "No DMARC record at _dmarc.bare.test: Gmail and Yahoo require one" in checks["dmarc"]
    assert "Hint: publish e.g. v=DMARC1; p=none;" in checks["dmarc"]
    assert checks["dkim"].startswith("WARN")


def test_cli_outbox_without_smtp_and_no_dns_answer(tmp_path: Path) -> None:
    with silent_udp_port() as sock:
        env = {**BASE_ENV, "NEWSLETTER_FEED_URL": "feed.xml", "NEWSLETTER_OUTBOX": "outbox"}
        started = time.monotonic()
        result = run(tmp_path, f"--dns-server=127.0.0.1:{sock.getsockname()[1]}", **env)
        assert time.monotonic() - started < 20
    assert result.returncode == 1
    checks = _lines(result)
    assert checks["outbox"].startswith("WARN") and "(will be created)" in checks["outbox"]
    assert "DNS lookup failed" in checks["spf"] and "DNS lookup failed" in checks["dmarc"]


def test_cli_bad_dns_server_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path, "--dns-server", "nowhere:port")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
    assert "--dns-server" not in run(tmp_path, "--help").stdout  # an advanced, hidden option


def test_cli_malformed_setting_is_a_fail_line(tmp_path: Path) -> None:
    result = run(tmp_path, "--dns-server=127.0.0.1:9", NEWSLETTER_SMTP_TIMEOUT="soon")
    assert result.returncode == 1
    assert "malformed NEWSLETTER_SMTP_TIMEOUT" in _lines(result)["settings"]
