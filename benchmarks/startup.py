"""Start-up time of the CLI against the bare `import click` it cannot go below.

    python benchmarks/startup.py                  # 7 rounds
    python benchmarks/startup.py --runs 15
    python benchmarks/startup.py --tree OTHER     # another checkout's package (OTHER/newsletter)

Each round runs, in fresh interpreters and in turn (so a busy machine slows all three
alike): `newsletter --help`, `newsletter status` on an empty, freshly migrated SQLite
database, and `python -c "import click"`. It prints the median wall time of each and
its ratio to the bare click import; the aim is `--help` within 2x of it. One warm-up
round runs first, so compiling the bytecode is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIGRATE = (
    "import sys; from newsletter.db import open_database; open_database(sys.argv[1]).dispose()"
)


def environment(tree: Path | None, database_url: str) -> dict[str, str]:
    """This environment without NEWSLETTER_* settings, plus the database (and the tree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATABASE_URL"] = database_url
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve())
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one run; a failing run stops the benchmark (it measured nothing)."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds to take the median of")
    parser.add_argument(
        "--tree", type=Path, help="folder holding the `newsletter` package to measure"
    )
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'subscribers.db'}"
        env = environment(args.tree, url)
        subprocess.run([python, "-c", MIGRATE, url], env=env, cwd=folder, check=True)
        cases = {
            "newsletter --help": [python, "-m", "newsletter", "--help"],
            "newsletter status": [python, "-m", "newsletter", "status"],
            "import click": [python, "-c", "import click"],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.runs + 1):
            for name, argv in cases.items():
                took = timed(argv, env, folder)
                if round_:  # round 0 warms the bytecode cache
                    times[name].append(took)
    medians = {name: statistics.median(values) for name, values in times.items()}
    click = medians["import click"]
    where = f" ({args.tree})" if args.tree else ""
    print(f"python {sys.version.split()[0]}, package from {args.tree or 'the installed tree'}")
    for name in ("newsletter --help", "newsletter status"):
        print(
            f"{name}{where}: {medians[name]:.2f} s median of {args.runs} "
            f"({medians[name] / click:.1f}x import click {click:.2f} s)"
        )
    print(f"python -c 'import click': {click:.2f} s median of {args.runs}")


if __name__ == "__main__":
    main()
