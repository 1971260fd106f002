"""`newsletter import` and `newsletter subscribers ...` through click and a real process."""

from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.cli.contacts import PROGRESS_FROM_ROWS, ImportProgress, format_progress
from newsletter.db import open_database
from newsletter.subscribers.csvformats import estimate_rows
from newsletter.subscribers.importer import import_contacts
from newsletter.subscribers.importreport import CHECKING, WRITING
from tests.support.contacts import CONTACTS, EXAMPLE
from tests.support.helpers import NEWSLETTER_COMMAND, cli_env, database_url, run_cli

pytestmark = pytest.mark.usefixtures("db_backend")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run the CLI in tmp_path with a database there; returns click's Result."""
    monkeypatch.chdir(tmp_path)
    env = {"NEWSLETTER_DATABASE_URL": database_url(tmp_path, "t.db")}

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(main, list(args), env=env, input=input)

    return invoke


def test_import_prints_the_report(run) -> None:
    result = run("import", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "imported           6" in result.output
    assert "duplicates         1" in result.output
    assert "rejected           3" in result.output
    again = run("import", str(EXAMPLE))
    assert "unchanged          6" in again.output


def test_import_dry_run_and_rejects(run, tmp_path: Path) -> None:
    result = run("import", str(EXAMPLE), "--dry-run", "--rejects", "rejects.csv")
    assert result.exit_code == 0 and "Dry run" in result.output
    assert run("subscribers", "list").output == ""
    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "reason" and len(rows) == 4


def test_import_source_option(run) -> None:
    run("import", str(EXAMPLE), "--source", "AASR sign-up sheet")
    out = run("subscribers", "export").stdout
    assert "AASR sign-up sheet" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.csv", "no such file"),
        (str(CONTACTS / "not_contacts.html"), "HTML page"),
        (str(CONTACTS / "no_email_column.csv"), "no email column"),
        (str(CONTACTS / "binary.csv"), "binary"),
    ],
)
def test_import_bad_file_is_one_line_exit_1(run, target: str, message: str) -> None:
    result = run("import", target)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.output


def test_subscribers_add_list_remove(run) -> None:
    result = run("subscribers", "add", "Ana@Example.ORG", "--name", "Ana Silva")
    assert result.exit_code == 0 and "Added Ana@example.org" in result.stdout
    assert run("subscribers", "add", "ana@example.org").exit_code == 0
    assert run("subscribers", "list").stdout == "Ana@example.org\tactive\tAna Silva\n"
    removed = run("subscribers", "remove", "ANA@example.org")
    assert removed.exit_code == 0 and "Unsubscribed" in removed.stdout
    again = run("subscribers", "add", "ana@example.org")
    assert again.exit_code == 0 and "Not added" in again.stderr
    assert run("subscribers", "list", "--status", "active").stdout == ""
    assert "unsubscribed" in run("subscribers", "list", "--status", "unsubscribed").stdout


def test_subscribers_errors(run) -> None:
    bad = run("subscribers", "add", "not-an-email")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: ")
    unknown = run("subscribers", "remove", "nobody@example.org")
    assert unknown.exit_code == 1 and "no subscriber" in unknown.stderr
    usage = run("subscribers", "list", "--status", "gone")
    assert usage.exit_code == 2


def test_export_stdout_and_file(run, tmp_path: Path) -> None:
    run("subscribers", "add", "+tag@example.org", "--name", "=1+2")
    result = run("subscribers", "export")
    assert result.exit_code == 0
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0][:3] == ["email", "name", "status"]
    assert rows[1][:2] == ["'+tag@example.org", "'=1+2"]
    to_file = run("subscribers", "export", "out.csv")
    assert to_file.exit_code == 0 and "Exported 1" in to_file.stdout
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == result.stdout


def test_forget_asks_first(run) -> None:
    run("subscribers", "add", "ana@example.org")
    declined = run("subscribers", "forget", "ana@example.org", input="n\n")
    assert declined.exit_code == 1
    assert "ana@example.org" in run("subscribers", "list").stdout
    done = run("subscribers", "forget", "ana@example.org", input="y\n")
    assert done.exit_code == 0 and "Erased" in done.stdout
    assert run("subscribers", "list").stdout == ""
    assert run("subscribers", "forget", "ana@example.org", "--yes").exit_code == 0
    assert "forgotten" in run("subscribers", "add", "ana@example.org").stderr


def _process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path, *args, NEWSLETTER_DATABASE_URL=database_url(tmp_path, "t.db"))


def test_real_process_bad_file(tmp_path: Path) -> None:
    proc = _process(tmp_path, "import", str(CONTACTS / "binary.csv"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ") and "binary" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) <= 2  # the message and its hint


def test_real_process_import_and_export(tmp_path: Path) -> None:
    proc = _process(tmp_path, "import", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert "imported           6" in proc.stdout
    export = _process(tmp_path, "subscribers", "export")
    assert export.returncode == 0 and len(export.stdout.splitlines()) == 7


# ---- import progress (issue 10.14) ------------------------------------------------


def test_estimate_rows_counts_data_rows_not_the_header(tmp_path: Path) -> None:
    """The bar's total: the old count included the header, so the bar stopped at 99%."""
    with_newline = tmp_path / "a.csv"
    with_newline.write_text("email\na@example.org\nb@example.org\n", encoding="utf-8")
    without = tmp_path / "b.csv"
    without.write_text("email\na@example.org\nb@example.org", encoding="utf-8")
    assert estimate_rows(with_newline) == estimate_rows(without) == 2
    assert estimate_rows(tmp_path / "missing.csv") == 0


def test_progress_callback_ends_at_total_in_each_stage(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "email\n" + "".join(f"u{i}@example.org\n" for i in range(2500)) + "u1@example.org\n",
        encoding="utf-8",
    )
    calls: list[tuple[str, int, int]] = []
    engine = open_database(database_url(tmp_path, "t.db"))
    report = import_contacts(engine, path, progress=lambda *a: calls.append(a))
    assert report.rows == 2501 and report.imported == 2500
    for stage, rows in ((CHECKING, 2501), (WRITING, 2500)):
        seen = [(done, total) for s, done, total in calls if s == stage]
        assert seen[-1] == (rows, rows)  # ends at 100%
        assert all(0 < done <= total for done, total in seen)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert [s for s, _, _ in calls] == sorted(
        (s for s, _, _ in calls), key=[CHECKING, WRITING].index
    )


def test_format_progress_shows_rows_rate_and_eta() -> None:
    line = format_progress("Checking", 30_000, 120_000, 2.0)
    assert "30,000/120,000 rows" in line and " 25%" in line
    assert "15,000 rows/s" in line and "ETA 0:06" in line
    done = format_progress("Writing", 120_000, 120_000, 65.0)
    assert "120,000/120,000 rows" in done and "100%" in done and "in 1:05" in done
    assert "ETA" not in done
    assert "ETA --:--" in format_progress("Writing", 0, 10, 0.0)


def test_import_progress_redraws_one_line_per_stage_and_ends_at_100() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ImportProgress(out, clock=lambda: now[0])
    for done in range(1000, 25_000, 1000):
        now[0] += 0.05  # redraws are throttled to ten a second
        bar(CHECKING, done, 24_999)
    bar(CHECKING, 24_500, 24_500)
    now[0] += 1.0
    bar(WRITING, 24_500, 24_500)
    bar(WRITING, 24_500, 24_500)  # a repeat draws nothing new
    bar.close()
    lines = out.getvalue().split("\n")
    assert len(lines) == 3 and lines[2] == ""
    checking = lines[0].split("\r")[1:]
    assert 10 <= len(checking) < 24
    assert "24,500/24,500 rows 100%" in checking[-1] and "in 0:01" in checking[-1]
    assert lines[1].count("\r") == 1 and "Writing" in lines[1] and "100%" in lines[1]


def test_real_process_import_on_a_terminal_shows_a_bar_that_ends_at_100(tmp_path: Path) -> None:
    """A real `newsletter import` whose stderr is a pseudo-terminal."""
    import pty

    rows = PROGRESS_FROM_ROWS + 500
    path = tmp_path / "big.csv"
    path.write_text(
        "email\n" + "".join(f"u{i}@example.org\n" for i in range(rows)), encoding="utf-8"
    )
    env = cli_env(NEWSLETTER_DATABASE_URL=database_url(tmp_path, "t.db"))
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*NEWSLETTER_COMMAND, "import", str(path)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        out, _ = proc.communicate(timeout=300)
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert f"imported           {rows}" in out
    text = screen.decode()
    last_check = [p for p in text.replace("\n", "\r").split("\r") if p.startswith("Checking")][-1]
    last_write = [p for p in text.replace("\n", "\r").split("\r") if p.startswith("Writing")][-1]
    for last in (last_check, last_write):
        assert f"{rows:,}/{rows:,} rows 100%" in last and "rows/s" in last, text[-500:]


def test_real_process_import_off_a_terminal_prints_no_bar(tmp_path: Path) -> None:
    rows = PROGRESS_FROM_ROWS + 500
    path = tmp_path / "big.csv"
    path.write_text(
        "email\n" + "".join(f"u{i}@example.org\n" for i in range(rows)), encoding="utf-8"
    )
    proc = _process(tmp_path, "import", str(path))
    assert proc.returncode == 0 and f"imported           {rows}" in proc.stdout
    assert proc.stderr == ""  # cron logs get the report only
