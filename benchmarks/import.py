"""Import speed and memory: `newsletter import` against a bare sqlite3.executemany.

    python benchmarks/import.py                 # 100,000 and 1,000,000 rows
    python benchmarks/import.py --rows 20000    # one quick size

For each size it writes a Mailchimp-style CSV (repeating domains, as real lists
have) in a temporary folder, then, each in a fresh subprocess and a fresh SQLite
file: (1) `import_contacts` with validation on; (2) a bare `sqlite3.executemany`
of the same rows into a table of the same shape and indexes. Peak memory is the
subprocess's maximum RSS, so the two runs do not share an interpreter's heap.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BARE_SCHEMA = """
CREATE TABLE subscriber (
    id INTEGER PRIMARY KEY, email VARCHAR(320) NOT NULL, email_key VARCHAR(320) NOT NULL,
    name VARCHAR(200), status VARCHAR(16) NOT NULL, token VARCHAR(64) NOT NULL,
    source VARCHAR(200), consent_ip VARCHAR(64), unsubscribe_method VARCHAR(32),
    confirm_token VARCHAR(64) UNIQUE, created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL, opt_in_at DATETIME, confirmed_at DATETIME,
    unsubscribed_at DATETIME);
CREATE UNIQUE INDEX ix_subscriber_email_key ON subscriber (email_key);
CREATE INDEX ix_subscriber_status ON subscriber (status);
CREATE UNIQUE INDEX ix_subscriber_token ON subscriber (token);
"""


def write_csv(path: Path, rows: int) -> None:
    """A Mailchimp-like export: BOM, mixed case, 2,000 domains, an opt-in time."""
    rnd = random.Random(42)
    domains = [f"mail{i}.example.org" for i in range(2000)] + ["gmail.com"] * 500
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Email Address", "First Name", "Last Name", "OPTIN_TIME"])
        for i in range(rows):
            local = f"{'Reader' if i % 7 == 0 else 'reader'}.{i}"
            writer.writerow(
                [f"{local}@{rnd.choice(domains)}", "Ana", f"N{i}", "2023-01-14 10:22:01"]
            )


def child_import(csv_path: str, db_path: str) -> dict[str, float]:
    from newsletter.db import open_database
    from newsletter.subscribers.importer import import_contacts

    engine = open_database("sqlite:///" + db_path)
    start = time.perf_counter()
    report = import_contacts(engine, csv_path)
    elapsed = time.perf_counter() - start
    assert report.imported == report.rows, report.lines()
    return {"seconds": elapsed, "rows": report.rows}


def child_bare(csv_path: str, db_path: str) -> dict[str, float]:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(BARE_SCHEMA)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    start = time.perf_counter()
    rows = 0

    def gen():  # the same rows, minimal work: no validation, no report
        nonlocal rows
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for email, first, last, optin in reader:
                rows += 1
                yield (
                    email, email.lower(), f"{first} {last}", "active", secrets.token_urlsafe(16),
                    "bench.csv", now, now, optin,
                )  # fmt: skip

    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO subscriber (email, email_key, name, status, token, source, created_at,"
        " updated_at, opt_in_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        gen(),
    )
    conn.execute("COMMIT")
    return {"seconds": time.perf_counter() - start, "rows": rows}


def run_child(kind: str, csv_path: Path, db_path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(csv_path), str(db_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows to generate")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, csv_path, db_path = args.child
        result = (child_import if kind == "import" else child_bare)(csv_path, db_path)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    sizes = args.rows or [100_000, 1_000_000]
    print(f"{'rows':>10} {'run':>8} {'seconds':>8} {'rows/s':>9} {'peak RSS':>9} {'vs bare':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            csv_path = Path(tmp) / f"contacts-{size}.csv"
            write_csv(csv_path, size)
            bare = run_child("bare", csv_path, Path(tmp) / f"bare-{size}.db")
            ours = run_child("import", csv_path, Path(tmp) / f"import-{size}.db")
            for name, res in (("bare", bare), ("import", ours)):
                rate = res["rows"] / res["seconds"]
                ratio = rate / (bare["rows"] / bare["seconds"])
                print(
                    f"{size:>10,} {name:>8} {res['seconds']:>8.2f} {rate:>9,.0f} "
                    f"{res['max_rss_mb']:>7.0f}MB {ratio:>7.2f}x"
                )


if __name__ == "__main__":
    main()
