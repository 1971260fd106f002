"""A real Dovecot IMAP server for tests: TLS only, one user, a Maildir in a temporary folder.

Dovecot runs in the foreground (`dovecot -F -c CONF`) with its own minimal
configuration, on 127.0.0.1 and a free high port, with a certificate from a
test CA made by `trustme` (clients trust it through SSL_CERT_FILE). Its state,
sockets, logs and passwd-file live in a short folder under /tmp (UNIX socket
paths are limited to about 100 characters, and Dovecot's auth process, which
runs as the `dovecot` user, cannot enter pytest's private tmp_path). Tests
seed mail by writing into the Maildir directly and read it back the same way.

Dovecot never accesses mail as root ("Mail access not allowed for root"), so
when the tests run as root (CI) mail belongs to the unprivileged `nobody`
user: the Maildir lives in its own folder under /tmp (which `nobody` can
enter, unlike pytest's tmp_path), and `add`/`folder` hand files over to that
user after writing. As any other user, mail simply belongs to that user.
"""

from __future__ import annotations

import contextlib
import mailbox
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import trustme

DOVECOT = Path("/usr/sbin/dovecot")
USER = "bounces"
PASSWORD = "imap test pass"


def unavailable_reason() -> str | None:
    if not DOVECOT.exists():
        return f"{DOVECOT} is missing (Debian package dovecot-imapd)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mail_owner() -> tuple[int, int]:
    """Who owns the mail: the current user, or `nobody` for root (see the module doc)."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {run}
state_dir = {run}/state
instance_name = newsletter-test-{port}
log_path = {log}
info_log_path = {log}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_uid = {uid}
mail_gid = {gid}
mail_home = {mail}/%u
default_internal_user = {internal}
default_login_user = {login}
default_internal_group = {internal_group}
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:{mail}/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"""


class DovecotServer:
    """Start with `start()`, stop with `stop()`; `url` is the NEWSLETTER_BOUNCE_IMAP_URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.mail_dir = Path(tempfile.mkdtemp(prefix="dovecot-mail-"))
        self.mail_uid, self.mail_gid = _mail_owner()
        self.log = root / "dovecot.log"
        self.ca = trustme.CA()
        self.ca_file = root / "imap-ca.pem"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"imaps://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{self.port}/INBOX"

    def maildir(self, folder: str | None = None) -> mailbox.Maildir:
        """The user's INBOX Maildir, or one of its folders (Maildir++: `.Name`)."""
        base = self.mail_dir / USER
        path = base if folder is None else base / f".{folder}"
        return mailbox.Maildir(path, create=True)

    def add(self, messages: list[bytes], folder: str | None = None) -> None:
        """Deliver messages by writing them into the Maildir, as an MDA would."""
        box = self.maildir(folder)
        for raw in messages:
            box.add(raw)
        self._chown()

    def messages(self, folder: str | None = None) -> list[bytes]:
        """Every message of the INBOX (or a folder), read from disk."""
        box = self.maildir(folder)
        return [box.get_bytes(key) for key in sorted(box.keys())]

    def _chown(self) -> None:
        if os.getuid() != 0:
            return
        os.chown(self.mail_dir, self.mail_uid, self.mail_gid)
        for top, dirs, files in os.walk(self.mail_dir):
            for name in dirs + files:
                os.chown(Path(top, name), self.mail_uid, self.mail_gid)

    def _write_config(self) -> Path:
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert_file, key_file = self.root / "imap-cert.pem", self.root / "imap-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        uid, gid = self.mail_uid, self.mail_gid
        passwd = self.run_dir / "passwd"  # read by the auth process, which is not root
        passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}:::::\n")
        self.mail_dir.chmod(0o755)
        self.maildir()  # the INBOX exists before the first login
        self._chown()
        conf = self.root / "dovecot.conf"
        conf.write_text(
            _CONFIG.format(
                run=self.run_dir,
                port=self.port,
                log=self.log,
                uid=uid,
                gid=gid,
                internal="dovecot",
                login="dovenull",
                internal_group="dovecot",
                cert=cert_file,
                key=key_file,
                mail=self.mail_dir,
                passwd=passwd,
            )
        )
        return conf

    def start(self, timeout: float = 15.0) -> DovecotServer:
        conf = self._write_config()
        self.process = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"dovecot exited: {output}{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on port {self.port}: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.mail_dir, ignore_errors=True)
