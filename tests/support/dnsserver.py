"""A real DNS server for tests: Debian's dnsmasq on 127.0.0.1 and a free port.

`newsletter doctor` reads SPF, DKIM and DMARC records with dnspython; those
checks are only trusted against real DNS answers (long TXT records split into
255-byte strings, NXDOMAIN versus no TXT, several records at one name), so
this runs dnsmasq in the foreground with the TXT records a test asks for.

Example::

    with DNSServer({"example.test": "v=spf1 -all", "_dmarc.example.test": "v=DMARC1; p=none"}):
        ...  # point a resolver at server.host, server.port (or server.address)

Every name under the given zones (default: ``test``, reserved by RFC 6761)
that has no record answers NXDOMAIN; other names are REFUSED (no upstream).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.resolver

from tests.support.lifecycle import ScratchServer

__all__ = ["DNSMASQ", "DNSServer", "unavailable_reason"]

DNSMASQ = Path("/usr/sbin/dnsmasq")

Records = Mapping[str, str | Sequence[str]]


def unavailable_reason() -> str | None:
    """Why the DNS tests cannot run here, or None."""
    if not DNSMASQ.is_file():
        return f"{DNSMASQ} is missing: install Debian's dnsmasq (.ci/run does)"
    return None


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP (dnsmasq listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port for the test DNS server")


def _quoted(text: str) -> str:
    """One TXT record as dnsmasq's quoted strings, split at 255 bytes as DNS requires."""
    if any(c in text for c in '"\\\r\n'):
        raise ValueError(
            f"TXT text for the test DNS server cannot hold quotes or newlines: {text!r}"
        )
    data = text.encode("ascii")
    chunks = [data[i : i + 255].decode() for i in range(0, len(data), 255)] or [""]
    return ",".join(f'"{chunk}"' for chunk in chunks)


def _config(records: Records) -> str:
    lines = []
    for name, value in records.items():
        for text in [value] if isinstance(value, str) else value:
            lines.append(f"txt-record={name.rstrip('.')},{_quoted(text)}")
    return "\n".join(lines) + "\n"


class DNSServer(ScratchServer):
    """dnsmasq serving TXT `records` (name -> text, or a list for several records)."""

    host = "127.0.0.1"

    def __init__(self, records: Records, *, zones: Iterable[str] = ("test",)) -> None:
        self.records = dict(records)
        self.zones = tuple(zones)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """HOST:PORT, as `newsletter doctor --dns-server` takes it."""
        return f"{self.host}:{self.port}"

    def resolver(self) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = 5.0
        return resolver

    def start(self) -> DNSServer:
        """Start dnsmasq on a free port and wait until it answers; retries a lost port race."""
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        folder = self._scratch_folder("dnsserver-")
        conf = folder / "dnsmasq.conf"
        conf.write_text(_config(self.records))
        log = folder / "dnsmasq.log"
        for _ in range(5):
            self.port = _free_port(self.host)
            with log.open("wb") as stderr:
                self._process = subprocess.Popen(
                    self._command(conf, folder), stdout=subprocess.DEVNULL, stderr=stderr
                )
            if self._wait_ready():
                return self
            self._stop_serving()
        output = log.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"dnsmasq did not start:\n{output}")

    def _command(self, conf: Path, folder: Path) -> list[str]:
        command = [
            str(DNSMASQ),
            "--keep-in-foreground",
            f"--port={self.port}",
            f"--listen-address={self.host}",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--conf-file={conf}",
            f"--pid-file={folder / 'dnsmasq.pid'}",
            "--log-facility=-",
            "--cache-size=0",
        ]
        command += [f"--local=/{zone}/" for zone in self.zones]
        if os.geteuid() == 0:
            command.append("--user=root")  # else dnsmasq drops to "nobody", and may not read conf
        return command

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        """True once dnsmasq answers a query; False when it exited (e.g. the port was taken)."""
        assert self._process is not None
        query = dns.message.make_query(f"ready.{self.zones[0]}.", "TXT")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                dns.query.udp(query, self.host, port=self.port, timeout=0.2)
                return True
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        return False

    def _stop_serving(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
