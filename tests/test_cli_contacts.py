"""`newsletter import` and `newsletter subscribers ...` through click and a real process."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from tests.helpers import database_url

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "contacts.csv"
CONTACTS = Path(__file__).parent / "contacts"


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
    env = dict(os.environ)
    env["NEWSLETTER_DATABASE_URL"] = database_url(tmp_path, "t.db")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


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
