"""How fast `newsletter send` delivers one issue, against baselines measured in the same run.

Runs Postfix's `smtp-sink` on 127.0.0.1 (Debian package `postfix`; only the
sink program, never the daemon) and sends the sample issue to N generated
subscribers. Printed for each N:

- newsletter send: messages/s from process start to exit (interpreter start-up,
  imports, feed, render, issue and delivery rows included; every message is
  recorded in the database before and after it is handed to the server), the
  peak RSS of the `newsletter send` process and the CPU per message of it and
  its SMTP connection processes;
- bare smtplib: one connection, a loop pushing the same bytes, no database;
- smtp-source: Postfix's C load generator with 8 sessions (the machine's limit);
- the same send with every message DKIM-signed (RSA-2048, a throwaway key made by
  `newsletter dkim keygen`; --no-dkim skips it), and on PostgreSQL (a throwaway
  database; --postgres '' skips it).

Each kind runs --rounds times (default 3), alternated, and the best run of each
kind counts: a slow run is the shared machine's noise, never faster code.

Usage: python benchmarks/send.py [--sizes 5000,100000] [--connections 4] [--rounds 3]
Read the ratios, which are measured side by side.
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
from dataclasses import dataclass
from pathlib import Path

from sink import SINK, start_sink
from throwaway import PostgresDatabases

ROOT = Path(__file__).resolve().parent.parent
FEED = ROOT / "examples" / "aasr-feed.xml"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
CONNECTIONS = 4
PG_DEFAULT = "postgresql+psycopg://newsletter:newsletter@127.0.0.1:5432/newsletter_test"


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


def newsletter_rate(
    workdir: Path, env: dict[str, str], n: int, url: str | None = None
) -> tuple[float, float, float, str]:
    """Messages/s, peak MB, CPU microseconds per message and the `-v` phase lines of
    `newsletter send` to n fresh subscribers (CPU time does not depend on what else the
    machine runs); `url` is a database other than a fresh SQLite file in `workdir`."""
    workdir.mkdir()
    env = {**env, "NEWSLETTER_DATABASE_URL": url or f"sqlite:///{workdir / 'bench.db'}"}
    make_subscribers(workdir, env, n)
    elapsed, rss, cpu, out = run_newsletter(workdir, env)
    if f"to {n:,} subscribers" not in out or "pending" in out or "unknown" in out:
        raise SystemExit(f"not everything was sent:\n{out}")
    phases = " ".join(line.strip() for line in out.splitlines() if line.startswith("  phase"))
    return n / elapsed, rss, cpu / n * 1e6, phases


def make_subscribers(workdir: Path, env: dict[str, str], count: int) -> None:
    """A migrated database with `count` active subscribers (bulk insert, not timed)."""
    from newsletter.db import open_database

    url = env["NEWSLETTER_DATABASE_URL"]
    open_database(url).dispose()
    now = "2026-01-01 00:00:00.000000"
    rows = (
        (
            f"reader{i}@example.org",
            f"reader{i}@example.org",
            f"Reader {i}",
            secrets.token_urlsafe(16),
            now,
            now,
        )
        for i in range(count)
    )
    if url.startswith("sqlite"):
        db = sqlite3.connect(workdir / "bench.db")
        db.executemany(
            "INSERT INTO subscriber (email, email_key, name, status, token, created_at,"
            " updated_at) VALUES (?, ?, ?, 'active', ?, ?, ?)",
            rows,
        )
        db.commit()
        db.close()
        return
    import psycopg

    columns = "email, email_key, name, status, token, created_at, updated_at"
    with (
        psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg,
        pg.cursor().copy(f"COPY subscriber ({columns}) FROM STDIN") as copy,
    ):
        for email, key, name, token, created, updated in rows:
            copy.write_row((email, key, name, "active", token, created, updated))
    # A list is loaded long before a send, and autovacuum has been through it since: without
    # this, it would set the new rows' hint bits and analyze the table during the send.
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
        pg.autocommit = True
        pg.execute("VACUUM (ANALYZE) subscriber")


def run_newsletter(workdir: Path, env: dict[str, str]) -> tuple[float, float, float, str]:
    """`newsletter send` in a child process: seconds from process start to exit (the
    interpreter's start included), peak RSS in MB, CPU seconds (its SMTP connection
    processes included), and its output."""
    code = (
        "import resource, runpy, sys, json\n"
        "sys.argv = ['newsletter', 'send', '-v']\n"
        "try:\n"
        "    runpy.run_module('newsletter', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]\n"
        "cpu = sum(u.ru_utime + u.ru_stime for u in use)\n"
        "print(json.dumps({'rss': rss, 'cpu': cpu}), file=sys.stderr)\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"newsletter send failed:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(done.stderr.strip().splitlines()[-1])
    return elapsed, figures["rss"], figures["cpu"], done.stdout


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


@dataclass
class Best:
    """The best rate of several alternated runs of one kind (the machine is shared: a
    slow run is the machine's noise, never faster code), with its figures."""

    rate: float = 0.0
    rss: float = 0.0  # the highest peak of all runs
    cpu: float = 0.0  # CPU microseconds per message of the best run
    phases: str = ""

    def add(self, rate: float, rss: float = 0.0, cpu: float = 0.0, phases: str = "") -> None:
        self.rss = max(self.rss, rss)
        if rate > self.rate:
            self.rate, self.cpu, self.phases = rate, cpu, phases


def measure(
    n: int,
    rounds: int,
    port: int,
    data: bytes,
    tmp: Path,
    connections: int,
    dkim_env: dict[str, str] | None,
    server: PostgresDatabases | None,
) -> dict[str, Best]:
    """`rounds` rounds, each running every kind once in turn, so that a busy moment of
    the machine falls on all of them alike."""
    best = {kind: Best() for kind in ("bare", "source", "sqlite", "dkim", "pg")}
    env = env_for(tmp, port, connections)
    for r in range(rounds):
        rate, cpu = bare_smtplib(port, data, min(n, 20000))
        best["bare"].add(rate, cpu=cpu)
        source = smtp_source(port, len(data), min(n, 50000))
        if source is not None:
            best["source"].add(source)
        best["sqlite"].add(*newsletter_rate(tmp / f"n{n}-{r}", env, n))
        if dkim_env is not None:
            best["dkim"].add(*newsletter_rate(tmp / f"n{n}-{r}-dkim", {**env, **dkim_env}, n))
        if server is not None:
            best["pg"].add(*newsletter_rate(tmp / f"n{n}-{r}-pg", env, n, server.create()))
    return best


def report(n: int, best: dict[str, Best]) -> None:
    bare, ours = best["bare"], best["sqlite"]
    print(f"{n:,} subscribers:")
    print(f"  bare smtplib loop, 1 connection: {bare.rate:,.0f} msg/s ({bare.cpu:.0f} us CPU/msg)")
    if best["source"].rate:
        print(f"  smtp-source x8 (the machine's limit): {best['source'].rate:,.0f} msg/s")
    print(
        f"  send SQLite: {ours.rate:,.0f} msg/s; ratio {ours.rate / bare.rate:.2f} to bare"
        f" (aim >= 1.5); peak RSS {ours.rss:.0f} MB; {ours.cpu:.0f} us CPU/msg, all processes"
    )
    print(f"    {ours.phases}")
    signed = best["dkim"]
    if signed.rate:
        print(
            f"  send SQLite + DKIM rsa-sha256 2048: {signed.rate:,.0f} msg/s; ratio"
            f" {signed.rate / bare.rate:.2f} to bare (aim >= 0.8); peak RSS {signed.rss:.0f} MB;"
            f" {signed.cpu:.0f} us CPU/msg"
        )
    pg = best["pg"]
    if pg.rate:
        print(
            f"  send PostgreSQL, 1 worker: {pg.rate:,.0f} msg/s; ratio {pg.rate / ours.rate:.2f}"
            f" to SQLite (aim >= 0.8); peak RSS {pg.rss:.0f} MB; {pg.cpu:.0f} us CPU/msg"
        )
        print(f"    {pg.phases}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,100000")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs; the best counts")
    parser.add_argument("--no-dkim", action="store_true", help="skip the DKIM-signed sends")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("NEWSLETTER_BENCH_POSTGRES_URL", PG_DEFAULT),
        help="a PostgreSQL URL whose role may CREATE DATABASE ('' to skip)",
    )
    args = parser.parse_args()
    if not Path(SINK).exists():
        raise SystemExit("needs Postfix's smtp-sink (Debian package postfix)")
    sizes = [int(s) for s in args.sizes.split(",")]
    sink, port = start_sink()
    server = PostgresDatabases(args.postgres) if args.postgres else None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
            data = one_message(Path(tmp))
            dkim_env = None if args.no_dkim else make_dkim_key(Path(tmp))
            print(
                f"message size: {len(data) / 1024:.1f} KB, smtp-sink on 127.0.0.1:{port}, "
                f"{args.connections} SMTP connections, best of {args.rounds} alternated runs",
                flush=True,
            )
            for n in sizes:
                best = measure(
                    n, args.rounds, port, data, Path(tmp), args.connections, dkim_env, server
                )
                report(n, best)
    finally:
        sink.terminate()
        sink.wait()
        if server is not None:
            server.drop_all()


if __name__ == "__main__":
    main()
