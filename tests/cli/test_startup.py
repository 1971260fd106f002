"""The CLI starts at once: `newsletter --help` and every `newsletter COMMAND --help` run in a
real process under `python -X importtime`, and none of them imports the heavy libraries
(the database layer, the web stack, the mail and feed parsers) that only running a command
needs. The help itself keeps its content: every command listed with its short help, every
option shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from newsletter.cli import main
from tests.support.helpers import cli_env, run_process

#: Top-level packages a help screen must not import (each costs tens to hundreds of ms).
HEAVY = frozenset(
    {
        "sqlalchemy",
        "sqlmodel",
        "pydantic",
        "alembic",
        "mako",
        "premailer",
        "cssutils",
        "feedparser",
        "fastapi",
        "starlette",
        "uvicorn",
        "cryptography",
        "dns",  # dnspython
        "ftfy",
        "nh3",
        "email_validator",
        "jinja2",
    }
)


def all_commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path, groups included: (), ("send",), ("subscribers", "add")..."""
    paths = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            paths += all_commands(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


COMMANDS = all_commands()


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None
        command = found
    return command


def imported_modules(importtime_log: str) -> set[str]:
    """The module names in `-X importtime` output ("import time: self | total | name")."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    return names


def help_run(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`python -X importtime -m newsletter ARGS --help` with no settings, and what it imported."""
    command = [sys.executable, "-X", "importtime", "-m", "newsletter", *args, "--help"]
    result = run_process(command, cwd, cli_env(COLUMNS="100"), timeout=60)
    return result, imported_modules(result.stderr)


def test_every_command_is_covered() -> None:
    """The walk finds the commands a user sees (a new command is checked without edits)."""
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "send", "status", "import", "serve", "doctor", "subscribers add"} <= names
    assert {"bounces fetch", "bounces import", "dkim keygen", "subscribers forget"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "newsletter")
def test_help_imports_no_heavy_module(tmp_path: Path, path: tuple[str, ...]) -> None:
    result, modules = help_run(tmp_path, *path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "newsletter.cli" in modules  # the log was read: the CLI itself shows up
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`newsletter {' '.join(path)} --help` imported {heavy[:10]}"
    assert "newsletter.models" not in modules and "newsletter.db" not in modules


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "newsletter")
def test_help_lists_the_command_and_its_options(tmp_path: Path, path: tuple[str, ...]) -> None:
    """Each help screen: its usage line, its own help text, every option, every subcommand."""
    result, _ = help_run(tmp_path, *path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    command = command_at(path)
    assert out.startswith(f"Usage: python -m newsletter {' '.join((*path, ''))}".rstrip())
    first_line = " ".join((command.help or "").split("\n\n")[0].split())
    assert first_line and first_line in " ".join(out.split())
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            for opt in param.opts:
                assert opt in out, f"{opt} missing from `{' '.join(path)} --help`"
    assert "--help" in out
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            short = sub.get_short_help_str(limit=200).rstrip(".")
            assert any(line.split()[:1] == [name] for line in out.splitlines()), name
            assert short[:30] in out, f"{name}'s short help missing"


def test_main_help_lists_every_command_with_its_short_help(tmp_path: Path) -> None:
    result, _ = help_run(tmp_path)
    listed = result.stdout.split("Commands:\n", 1)[1]
    rows = {line.split()[0]: line for line in listed.splitlines() if line.strip()}
    assert sorted(rows) == [
        "bounces",
        "dkim",
        "doctor",
        "form",
        "import",
        "send",
        "serve",
        "status",
        "subscribers",
    ]
    assert "Send the feed's new stories to every active subscriber." in rows["send"]
    assert "Manage subscribers one by one." in rows["subscribers"]


def test_spelt_out_constants_agree_with_the_core() -> None:
    """The values the help shows without importing the core are the core's own."""
    from newsletter.bounces.mailbox import DEFAULT_FOLDER
    from newsletter.cli import bounces, contacts
    from newsletter.models import SubscriberStatus
    from newsletter.subscribers.importreport import CHECKING, WRITING

    assert tuple(contacts.SUBSCRIBER_STATUSES) == tuple(SubscriberStatus.ALL)
    assert bounces.DEFAULT_FOLDER == DEFAULT_FOLDER
    # the progress bar labels its stages by the importer's names, capitalised
    assert (CHECKING.capitalize(), WRITING.capitalize()) == (
        "Checking",
        "Writing",
    )
