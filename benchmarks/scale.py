"""Several `newsletter send` workers on one issue (PostgreSQL), against Postfix's smtp-sink.

For 1, 2 and 4 workers (separate `python -m newsletter send` processes, as on
separate hosts), a fresh database with N subscribers, one issue: prints
messages/s over the whole run (process start to last exit) and over the send
phase (first to last `sent_at`, which leaves out start-up), and the scaling
ratio against one worker. Every run checks that each delivery was sent.

Needs a PostgreSQL server whose role may CREATE DATABASE:
    NEWSLETTER_BENCH_POSTGRES_URL (or NEWSLETTER_TEST_POSTGRES_URL)
and smtp-sink (Debian package `postfix`; only the sink program runs).

Usage: python benchmarks/scale.py [--messages 20000] [--workers 1,2,4] [--connections 4]
On a machine with few cores the workers share the CPU with the sink and the
database: read the ratio as "what one more worker adds on this machine".
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sink import SINK, start_sink  # noqa: E402
from throwaway import PostgresDatabases  # noqa: E402

from newsletter.db import open_database  # noqa: E402
from newsletter.models import Subscriber  # noqa: E402

FEED = ROOT / "examples" / "aasr-feed.xml"


def add_subscribers(url: str, count: int) -> None:
    engine = open_database(url)
    with engine.begin() as conn:
        for start in range(0, count, 10_000):
            conn.execute(
                sa.insert(Subscriber),
                [
                    {
                        "email": f"reader{i:08d}@example.org",
                        "email_key": f"reader{i:08d}@example.org",
                        "status": "active",
                        "token": secrets.token_urlsafe(16),
                    }
                    for i in range(start, min(count, start + 10_000))
                ],
            )
    engine.dispose()


def run(url: str, port: int, workers: int, connections: int, count: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_FEED_URL=str(FEED),
        NEWSLETTER_DATABASE_URL=url,
        NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{port}",
        NEWSLETTER_SMTP_CONNECTIONS=str(connections),
        NEWSLETTER_FROM="AASR <news@endseclusion.org>",
        NEWSLETTER_POSTAL_ADDRESS="PO Box 1, Springfield",
        NEWSLETTER_RETRY_DELAYS="0",
        PYTHONPATH=str(ROOT),
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "newsletter", "send"],
                cwd=tmp,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        outs = [p.communicate() for p in procs]
        wall = time.monotonic() - started
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a worker failed:\n{out}\n{err}")
    engine = open_database(url)
    with engine.connect() as conn:
        sent, first, last = conn.execute(
            sa.text("SELECT count(*), min(sent_at), max(sent_at) FROM delivery WHERE status='sent'")
        ).one()
    engine.dispose()
    if sent != count:
        raise SystemExit(f"{sent} of {count} sent")
    phase = (last - first).total_seconds()
    return {"wall": count / wall, "send": count / phase if phase > 0 else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections per worker")
    args = parser.parse_args()
    url = os.environ.get("NEWSLETTER_BENCH_POSTGRES_URL") or os.environ.get(
        "NEWSLETTER_TEST_POSTGRES_URL"
    )
    if not url:
        raise SystemExit("set NEWSLETTER_BENCH_POSTGRES_URL to a PostgreSQL server (CREATEDB)")
    if not Path(SINK).exists():
        raise SystemExit("smtp-sink not found (Debian package postfix)")
    counts = [int(n) for n in args.workers.split(",")]
    databases = PostgresDatabases(url)
    sink, port = start_sink()
    rows = []
    try:
        for workers in counts:
            db = databases.create()
            add_subscribers(db, args.messages)
            rows.append((workers, run(db, port, workers, args.connections, args.messages)))
    finally:
        sink.terminate()
        sink.wait()
        databases.drop_all()
    base = rows[0][1]["send"]
    print(
        f"{args.messages} messages, {args.connections} SMTP connections per worker, "
        f"{os.cpu_count()} CPUs, PostgreSQL + smtp-sink on this host"
    )
    print(f"{'workers':>7}  {'msg/s (wall)':>12}  {'msg/s (send)':>12}  {'ratio':>5}")
    for workers, rate in rows:
        print(
            f"{workers:>7}  {rate['wall']:>12,.0f}  {rate['send']:>12,.0f}  "
            f"{rate['send'] / base:>5.2f}"
        )


if __name__ == "__main__":
    main()
