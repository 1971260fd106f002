"""The production files in deploy/ are checked, not only shown in docs/deploy.md.

systemd-analyze verifies the units (inside a throw-away root that holds the paths they
name), the ExecStart lines are real commands that start and answer, and the proxy
snippets point at the address the service listens on.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = ("newsletter-serve.service", "newsletter-send.service", "newsletter-send.timer")
INSTALL_DIR = "/srv/newsletter"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DEPLOY / name)
    return parser


def exec_start(name: str) -> list[str]:
    return shlex.split(read_unit(name)["Service"]["ExecStart"])


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} is missing (Debian package systemd)")
    root = tmp_path / "root"
    # the units the ours depend on (network-online.target, sysinit.target...)
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(DEPLOY / name, unit_dir / name)
    # the installed command the units run, as an empty executable stub
    program = root / INSTALL_DIR.lstrip("/") / ".venv/bin/newsletter"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    done = subprocess.run(
        [tool, "verify", f"--root={root}", *(f"/etc/systemd/system/{n}" for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
        check=False,
    )
    # verify exits 0 on unknown keys and typos but prints them: any output is a finding
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and output == "", output


def test_timer_starts_the_send_service() -> None:
    timer = read_unit("newsletter-send.timer")
    assert timer["Timer"].get("Unit", "newsletter-send.service") == "newsletter-send.service"
    assert timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"
    send = read_unit("newsletter-send.service")
    assert send["Service"]["Type"] == "oneshot"
    assert "Install" not in send  # started by the timer only


def test_units_run_real_commands() -> None:
    """Each ExecStart names the installed `newsletter` script and options the CLI accepts."""
    for name in ("newsletter-serve.service", "newsletter-send.service"):
        argv = exec_start(name)
        assert argv[0] == f"{INSTALL_DIR}/.venv/bin/newsletter"
        assert read_unit(name)["Service"]["WorkingDirectory"] == INSTALL_DIR  # where .env is
        done = subprocess.run(
            [sys.executable, "-m", "newsletter", *argv[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_unit_command_answers_health(tmp_path: Path) -> None:
    """The serve unit's command line, run as systemd would (working directory with .env)."""
    argv = exec_start("newsletter-serve.service")
    port = _free_port()
    argv = [sys.executable, "-m", "newsletter", *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    (tmp_path / ".env").write_text(
        'NEWSLETTER_FROM="AASR <news@endseclusion.org>"\n'
        "NEWSLETTER_POSTAL_ADDRESS=PO Box 1, Springfield\n"
        f"NEWSLETTER_BASE_URL=http://127.0.0.1:{port}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        answer: httpx.Response | None = None
        for _ in range(300):
            if proc.poll() is not None:
                break
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer is not None, proc.communicate(timeout=10)[0] if proc.poll() else "no answer"
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("snippet", ["nginx.conf", "Caddyfile"])
def test_proxy_snippets_point_at_the_service(snippet: str) -> None:
    argv = exec_start("newsletter-serve.service")
    address = f"{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}"
    text = (DEPLOY / snippet).read_text()
    assert address in text
    if snippet == "nginx.conf":
        # replaced, never appended: the app trusts the header from the proxy only
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in text


def test_deploy_doc_quotes_the_files() -> None:
    """docs/deploy.md shows the files as they are in deploy/ (no drift between the two)."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for name in (*UNITS, "nginx.conf", "Caddyfile"):
        body = (DEPLOY / name).read_text().strip()
        assert body in doc, f"docs/deploy.md does not quote deploy/{name} as it is"
