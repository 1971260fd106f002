"""How fast `newsletter send` delivers one issue, against baselines measured in the same run.

Runs Postfix's `smtp-sink` on 127.0.0.1 (Debian package `postfix`; only the
sink program, never the daemon) and sends the sample issue to N generated
subscribers. Printed for each N:

- newsletter send: messages/s (the ledger's writes included: every message is
  recorded in SQLite before and after it is handed to the server) and the
  peak memory of the process;
- bare smtplib: one connection, a loop pushing the same bytes, no database;
- smtp-source: Postfix's C load generator with 8 sessions (the machine's limit);
- with --dkim: newsletter send again on a fresh database, every message DKIM-signed
  with a throwaway key made by `newsletter dkim keygen` in the temp folder.

Usage: python benchmarks/send.py [--sizes 10000,100000] [--connections 4] [--dkim]
Timings vary on shared machines: read the ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sink import SINK, start_sink

ROOT = Path(__file__).resolve().parent.parent
FEED = ROOT / "examples" / "aasr-feed.xml"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def env_for(workdir: Path, port: int, connections: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_FEED_URL=str(FEED),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{port}",
        NEWSLETTER_SMTP_CONNECTIONS=str(connections),
        NEWSLETTER_FROM="AASR <news@endseclusion.org>",
        NEWSLETTER_POSTAL_ADDRESS="PO Box 1, Springfield",
        NEWSLETTER_RETRY_DELAYS="0",
        PYTHONPATH=str(ROOT),
    )
    return env


def make_dkim_key(tmp: Path) -> dict[str, str]:
    """A throwaway signing key (via the real CLI) and the two settings that turn signing on."""
    env = env_for(tmp, 1, 1)
    key = tmp / "dkim-bench.pem"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "newsletter",
            "dkim",
            "keygen",
            "--selector",
            "bench",
            "--out",
            str(key),
        ],
        env=env,
        cwd=tmp,
        check=True,
        capture_output=True,
    )
    return {"NEWSLETTER_DKIM_PRIVATE_KEY": str(key), "NEWSLETTER_DKIM_SELECTOR": "bench"}


def newsletter_rate(workdir: Path, env: dict[str, str], n: int) -> tuple[float, float, float]:
    """Messages/s, peak MB and CPU microseconds per message of `newsletter send` to n
    fresh subscribers (CPU time does not depend on what else the machine runs)."""
    workdir.mkdir()
    env = {**env, "NEWSLETTER_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}"}
    make_subscribers(workdir, env, n)
    elapsed, rss, cpu, out = run_newsletter(workdir, env)
    if f"{n} sent" not in out:
        raise SystemExit(f"not everything was sent:\n{out}")
    return n / elapsed, rss, cpu / n * 1e6


def make_subscribers(workdir: Path, env: dict[str, str], count: int) -> None:
    """A migrated database with `count` active subscribers (bulk insert, not timed)."""
    subprocess.run(
        [sys.executable, "-m", "newsletter", "status"],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    db = sqlite3.connect(workdir / "bench.db")
    now = "2026-01-01 00:00:00.000000"
    db.executemany(
        "INSERT INTO subscriber (email, email_key, name, status, token, created_at, updated_at)"
        " VALUES (?, ?, ?, 'active', ?, ?, ?)",
        (
            (
                f"reader{i}@example.org",
                f"reader{i}@example.org",
                f"Reader {i}",
                secrets.token_urlsafe(16),
                now,
                now,
            )
            for i in range(count)
        ),
    )
    db.commit()
    db.close()


def run_newsletter(workdir: Path, env: dict[str, str]) -> tuple[float, float, float, str]:
    """`newsletter send` in a child process: seconds, peak RSS in MB, CPU seconds
    (its SMTP worker processes included), and its output."""
    code = (
        "import resource, runpy, sys, time, json\n"
        "sys.argv = ['newsletter', 'send']\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    runpy.run_module('newsletter', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "elapsed = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]\n"
        "cpu = sum(u.ru_utime + u.ru_stime for u in use)\n"
        "print(json.dumps({'elapsed': elapsed, 'rss': rss, 'cpu': cpu}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"newsletter send failed:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(done.stderr.strip().splitlines()[-1])
    return figures["elapsed"], figures["rss"], figures["cpu"], done.stdout


def one_message(workdir: Path) -> bytes:
    """The bytes of one real message of the issue (as the outbox would write them)."""
    outbox = workdir / "sample-outbox"
    env = env_for(workdir, 1, 1)
    env.pop("NEWSLETTER_SMTP_URL")
    env["NEWSLETTER_DATABASE_URL"] = f"sqlite:///{workdir / 'sample.db'}"
    env["NEWSLETTER_OUTBOX"] = str(outbox)
    subprocess.run(
        [sys.executable, "-m", "newsletter", "subscribers", "add", "one@example.org"],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "newsletter", "send"],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return next(outbox.glob("*.eml")).read_bytes()


def bare_smtplib(port: int, data: bytes, count: int) -> tuple[float, float]:
    """Messages/s of a plain smtplib loop over one connection (no database at all),
    and its CPU microseconds per message."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        smtp.sendmail("news@endseclusion.org", [f"reader{i}@example.org"], data)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    smtp.quit()
    return count / elapsed, cpu / count * 1e6


def smtp_source(port: int, size: int, count: int, sessions: int = 8) -> float | None:
    if not Path(SOURCE).exists():
        return None
    start = time.perf_counter()
    subprocess.run(
        [
            SOURCE,
            "-s",
            str(sessions),
            "-m",
            str(count),
            "-l",
            str(size),
            "-f",
            "news@endseclusion.org",
            "-t",
            "reader@example.org",
            f"127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
    )
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--dkim", action="store_true", help="also send with DKIM signing (a throwaway key)"
    )
    args = parser.parse_args()
    if not Path(SINK).exists():
        raise SystemExit("needs Postfix's smtp-sink (Debian package postfix)")
    sizes = [int(s) for s in args.sizes.split(",")]
    sink, port = start_sink()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
            data = one_message(Path(tmp))
            dkim_env = make_dkim_key(Path(tmp)) if args.dkim else None
            print(f"message size: {len(data) / 1024:.1f} KB, smtp-sink on 127.0.0.1:{port}")
            for n in sizes:
                env = env_for(Path(tmp), port, args.connections)
                ours, rss, cpu = newsletter_rate(Path(tmp) / f"n{n}", env, n)
                signed = None
                if dkim_env is not None:
                    signed_env = {**env, **dkim_env}
                    rate, _, signed_cpu = newsletter_rate(Path(tmp) / f"n{n}-dkim", signed_env, n)
                    signed = (rate, signed_cpu)
                bare, bare_cpu = bare_smtplib(port, data, min(n, 20000))
                source = smtp_source(port, len(data), min(n, 50000))
                rows.append((n, ours, rss, cpu, signed, bare, bare_cpu, source))
    finally:
        sink.terminate()
        sink.wait()
    print()
    dkim_head = f" {'with DKIM':>10} {'ratio':>6}" if args.dkim else ""
    print(
        f"{'subscribers':>11} {'newsletter msg/s':>16} {'peak MB':>8}{dkim_head} "
        f"{'bare smtplib':>13} {'ratio':>6} {'smtp-source x8':>15} {'of limit':>9}"
    )
    for n, ours, rss, _, signed, bare, _, source in rows:
        src = f"{source:15.0f}" if source else f"{'n/a':>15}"
        limit = f"{ours / source:9.2f}" if source else f"{'n/a':>9}"
        dkim_cols = f" {signed[0]:10.0f} {signed[0] / bare:6.2f}" if signed is not None else ""
        print(
            f"{n:>11} {ours:16.0f} {rss:8.0f}{dkim_cols} {bare:13.0f} {ours / bare:6.2f} "
            f"{src} {limit}"
        )
    print(
        f"\nnewsletter send: {args.connections} SMTP connections, SQLite bookkeeping per message;"
        " ratio = newsletter / bare smtplib loop (aim: above 1.5)."
    )
    if args.dkim:
        print(
            "with DKIM: every message signed (rsa-sha256 2048, relaxed/relaxed); its ratio is"
            " signed / bare smtplib loop (aim: at least 1.0)."
        )
        print("CPU per message (all processes of the send; the bare loop's client):")
        for n, _, _, cpu, signed, _, bare_cpu, _ in rows:
            assert signed is not None
            print(
                f"{n:>11}: {cpu:.0f} us without DKIM, {signed[1]:.0f} us with"
                f" (+{signed[1] - cpu:.0f} us to sign), bare loop {bare_cpu:.0f} us"
            )


if __name__ == "__main__":
    main()
