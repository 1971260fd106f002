"""A wheel built from the repo, installed in a fresh venv, renders and sends an issue:
the templates and migrations ship inside the wheel, not only in the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_built_wheel_renders_an_email(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git to copy the tracked tree")
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ]
        if _has_hatchling()
        else [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("newsletter-*.whl"))
    env_dir = tmp_path / "venv"
    # The venv sees the already installed dependencies, but not the source tree.
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = tmp_path / "site"
    site.mkdir()
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--force-reinstall",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.copy(ROOT / "examples" / "aasr-feed.xml", site / "feed.xml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "PYTHONPATH"))}
    env.update(
        NEWSLETTER_FEED_URL="feed.xml",
        NEWSLETTER_FROM="AASR <news@endseclusion.org>",
        NEWSLETTER_POSTAL_ADDRESS="PO Box 1, Springfield",
    )
    where = subprocess.run(
        [str(python), "-c", "import newsletter, sys; print(newsletter.__file__)"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(env_dir) in where.stdout, where.stdout + where.stderr  # not the source tree
    for args in (["subscribers", "add", "reader@example.org"], ["send"]):
        done = subprocess.run(
            [str(env_dir / "bin" / "newsletter"), *args],
            cwd=site,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    emails = list((site / "outbox").glob("*.eml"))
    assert len(emails) == 1
    assert b"multipart/alternative" in emails[0].read_bytes()


def _has_hatchling() -> bool:
    try:
        import hatchling  # noqa: F401
    except ImportError:
        return False
    return True
