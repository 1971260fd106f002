"""Import speed and memory: `newsletter import` against a bare bulk insert of the same rows.

    python benchmarks/import.py                       # 100,000 and 1,000,000 rows
    python benchmarks/import.py --rows 20000          # one quick size
    NEWSLETTER_BENCH_POSTGRES_URL=postgresql+psycopg://... python benchmarks/import.py

Run by hand, never in CI. For each size it writes a realistic contacts CSV
(names, some non-ASCII; mixed-case addresses over a few hundred domains, a few
very common; about 1% invalid rows and 1% duplicates differing only in case)
in a temporary folder, then times, each as a whole subprocess from start to
exit, into a freshly migrated database, alternately and `--repeat` times (3),
the fastest run of each kept (the machine may be shared):

- `newsletter import FILE` (full validation, the report, the two stages);
- the baseline: a bare `sqlite3.executemany` of the same rows (the CSV read
  with `csv.reader`, the key lower-cased, a token drawn) into the same schema,
  in one transaction, with no validation.

With NEWSLETTER_BENCH_POSTGRES_URL (or NEWSLETTER_TEST_POSTGRES_URL) set, the
same pair runs on PostgreSQL (a throw-away database per run), the baseline
being a bare psycopg COPY of the same rows. Peak RSS is the import process's
maximum resident set (wait4's rusage of that child alone).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from throwaway import PostgresDatabases

ROOT = Path(__file__).resolve().parents[1]
AIM = 1 / 3

FIRST = (
    "Ana", "Maria", "José", "Zoë", "Chloé", "Liam", "Noah", "Olivia", "Emma", "Ava", "Sophia",
    "Mia", "Lucas", "Ethan", "Amélie", "Björn", "Søren", "Łukasz", "Nguyễn", "Aisha", "Omar",
    "Fatima", "Kenji", "Yuki", "Priya", "Arjun", "Grace", "Henry", "Jack", "Leo",
)  # fmt: skip
LAST = (
    "Smith", "Jones", "García", "Müller", "Rossi", "Dubois", "Nowak", "Kowalski", "Ivanova",
    "O'Brien", "Nguyen", "Tanaka", "Patel", "Singh", "Cohen", "Silva", "Santos", "Andersen",
    "Johansson", "Murphy", "Kelly", "Brown", "Taylor", "Wilson",
)  # fmt: skip


def _domains(rnd: random.Random) -> tuple[list[str], list[float]]:
    """A few hundred domains, a handful of them very common (as webmail is in real lists)."""
    common = ["gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "aol.com", "icloud.com"]
    tlds = ["org", "com", "net", "edu", "co.uk", "de", "fr", "ca", "org.au"]
    rare = [f"{w}{i}.{rnd.choice(tlds)}" for i, w in enumerate(["school", "district"] * 150)]
    return common + rare, [40.0, 12.0, 10.0, 8.0, 3.0, 3.0] + [0.08] * len(rare)


def write_csv(path: Path, rows: int) -> None:
    """A Mailchimp-like export (BOM, mixed case, opt-in times), ~1% bad rows, ~1% repeats."""
    rnd = random.Random(42)
    domains, weights = _domains(rnd)
    picks = rnd.choices(domains, weights, k=min(rows, 200_000))
    recent: list[str] = []
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Email Address", "First Name", "Last Name", "OPTIN_TIME", "MEMBER_RATING"])
        for i in range(rows):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            roll = rnd.random()
            if roll < 0.01 and recent:  # the same person again, in other case
                email = rnd.choice(recent).upper()
            elif roll < 0.015:
                email = f"{first}.{last}.{i}(at){picks[i % len(picks)]}"  # no @ sign
            elif roll < 0.02:
                email = f"{first.lower()}{i}@{picks[i % len(picks)]}..com"  # bad domain
            else:
                local = f"{first}.{last}{i}" if i % 3 else f"{first.lower()}_{i}"
                local = local.encode("ascii", "ignore").decode().replace("'", "")
                email = f"{local}@{picks[i % len(picks)]}"
                if i % 50 == 0:
                    recent = [*recent[-99:], email]
            when = f"2023-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:01"
            writer.writerow([email, first, last, when, rnd.randint(1, 5)])


BARE_SQLITE = r"""
import csv, secrets, sqlite3, sys
from datetime import UTC, datetime
csv_path, db_path = sys.argv[1:3]
now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
conn = sqlite3.connect(db_path, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
def rows():
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for email, first, last, optin, _rating in reader:
            yield (email, email.lower(), f"{first} {last}", "active",
                   secrets.token_urlsafe(16), "bench.csv", now, now, optin)
conn.execute("BEGIN IMMEDIATE")
conn.executemany(
    "INSERT OR IGNORE INTO subscriber (email, email_key, name, status, token, source,"
    " created_at, updated_at, opt_in_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
conn.execute("COMMIT")
"""

BARE_COPY = r"""
import csv, secrets, sys
from datetime import UTC, datetime
import psycopg
csv_path, dsn = sys.argv[1:3]
now = datetime.now(UTC)
seen = set()
with psycopg.connect(dsn) as conn, conn.cursor() as cur:
    with cur.copy("COPY subscriber (email, email_key, name, status, token, source,"
                  " created_at, updated_at, opt_in_at) FROM STDIN") as copy:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for email, first, last, optin, _rating in reader:
                key = email.lower()
                if key in seen:  # COPY has no ON CONFLICT: skip repeats as the import does
                    continue
                seen.add(key)
                copy.write_row((email, key, f"{first} {last}", "active",
                                secrets.token_urlsafe(16), "bench.csv", now, now, optin + "+00"))
"""


@dataclass
class Run:
    seconds: float
    max_rss_mb: float


def timed(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run a process to its exit: its wall time and its own peak RSS (wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args[:4]} failed ({proc.returncode}):\n{out.decode()}{err.decode()}")
    return Run(seconds, usage.ru_maxrss / 1024)


def migrated(url: str) -> str:
    """The database at `url`, migrated to the current schema; returns `url`."""
    from newsletter.db import open_database

    open_database(url).dispose()
    return url


def import_run(csv_path: Path, url: str, tmp: Path) -> Run:
    env = dict(os.environ, NEWSLETTER_DATABASE_URL=url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return timed([sys.executable, "-m", "newsletter", "import", str(csv_path)], env=env, cwd=tmp)


def line(engine: str, size: int, ours: Run, bare: Run, bare_name: str) -> str:
    rate, bare_rate = size / ours.seconds, size / bare.seconds
    return (
        f"{engine}import {size:,} rows: {rate:,.0f} rows/s; {bare_name} {bare_rate:,.0f} rows/s; "
        f"ratio {rate / bare_rate:.2f} (aim >= {AIM:.2f}); peak RSS {ours.max_rss_mb:.0f} MB"
    )


def best(runs: list[Run]) -> Run:
    """The fastest of repeated runs (the least disturbed on a shared machine), with the
    highest peak RSS of them all."""
    return Run(min(r.seconds for r in runs), max(r.max_rss_mb for r in runs))


def bench_sqlite(size: int, csv_path: Path, tmp: Path, repeat: int) -> str:
    bares, ours = [], []
    for _ in range(repeat):  # alternated, so a busy spell hurts both sides alike
        bare_db, ours_db = tmp / f"bare-{size}.db", tmp / f"import-{size}.db"
        migrated(f"sqlite:///{bare_db}")
        migrated(f"sqlite:///{ours_db}")
        bares.append(timed([sys.executable, "-c", BARE_SQLITE, str(csv_path), str(bare_db)]))
        ours.append(import_run(csv_path, f"sqlite:///{ours_db}", tmp))
        for db in tmp.glob("*.db*"):
            db.unlink()
    return line("", size, best(ours), best(bares), "bare executemany")


def bench_postgres(
    size: int, csv_path: Path, tmp: Path, server: PostgresDatabases, repeat: int
) -> str:
    bares, ours = [], []
    for _ in range(repeat):
        bare_url, ours_url = migrated(server.create()), migrated(server.create())
        dsn = sa.make_url(bare_url).set(drivername="postgresql")
        bare_dsn = dsn.render_as_string(hide_password=False)
        bares.append(timed([sys.executable, "-c", BARE_COPY, str(csv_path), bare_dsn]))
        ours.append(import_run(csv_path, ours_url, tmp))
        server.drop_all()
    return line("PostgreSQL ", size, best(ours), best(bares), "bare COPY")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows to generate (repeatable)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, the best kept")
    args = parser.parse_args()
    sizes = args.rows or [100_000, 1_000_000]
    pg_url = os.environ.get("NEWSLETTER_BENCH_POSTGRES_URL") or os.environ.get(
        "NEWSLETTER_TEST_POSTGRES_URL"
    )
    server = PostgresDatabases(pg_url) if pg_url and not args.no_postgres else None
    print(f"{os.cpu_count()} CPUs; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for size in sizes:
                csv_path = tmp / "contacts.csv"
                write_csv(csv_path, size)
                print(bench_sqlite(size, csv_path, tmp, args.repeat), flush=True)
                if server is not None:
                    print(bench_postgres(size, csv_path, tmp, server, args.repeat), flush=True)
    finally:
        if server is not None:
            server.drop_all()


if __name__ == "__main__":
    main()
