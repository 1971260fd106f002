"""A wheel built from the repo, installed in a fresh venv, renders and sends an issue:
the templates and migrations ship inside the wheel, not only in the source tree.

The venv is self-contained: it does not see the base interpreter's packages (a fresh
machine has none of ours there), only the wheel and, through one .pth file, the
site-packages directories of the environment running the tests (for the dependencies).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support.helpers import run_process

ROOT = Path(__file__).resolve().parents[2]

# one import name per runtime dependency in pyproject.toml
DEPENDENCY_MODULES = (
    "click",
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "jinja2",
    "premailer",
    "feedparser",
    "dotenv",
    "nh3",
    "ftfy",
    "email_validator",
    "fastapi",
    "uvicorn",
    "multipart",
    "dns",
    "cryptography",
    "publicsuffixlist",
)


def running_site_dirs() -> list[str]:
    """The site-packages directories this interpreter imports from (its venv's, not the base's
    unless the running environment itself includes them)."""
    candidates = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    wanted = {str(Path(p).resolve()) for p in candidates}
    # keep sys.path order, and only what this interpreter really has on its path
    return [p for p in sys.path if p and str(Path(p).resolve()) in wanted and Path(p).is_dir()]


def base_site_dirs() -> list[str]:
    """The base interpreter's own site-packages (what a fresh machine has nothing of ours in)."""
    base = getattr(sys, "_base_executable", sys.executable)
    out = subprocess.run(
        [base, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [str(Path(p).resolve()) for p in json.loads(out.stdout)]


def make_isolated_venv(env_dir: Path) -> Path:
    """A venv without system site packages whose .pth names the running site dirs."""
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # plain lines: the directories join sys.path after the venv's own site-packages, and
    # .pth files inside them (the editable install's path to the source tree) are not run
    (Path(purelib) / "_running_env.pth").write_text("\n".join(running_site_dirs()) + "\n")
    return python


@pytest.mark.slow
def test_built_wheel_renders_an_email(tmp_path: Path) -> None:
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
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("newsletter-*.whl"))
    env_dir = tmp_path / "venv"
    python = make_isolated_venv(env_dir)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
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
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.copy(ROOT / "examples" / "aasr-feed.xml", site_dir / "feed.xml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "PYTHON"))}
    env.update(
        NEWSLETTER_FEED_URL="feed.xml",
        NEWSLETTER_FROM="AASR <news@endseclusion.org>",
        NEWSLETTER_POSTAL_ADDRESS="PO Box 1, Springfield",
        NEWSLETTER_OUTBOX="outbox",
    )
    probe = (
        "import importlib, json, sys, newsletter, newsletter.issues.render\n"
        "mods = {m: importlib.import_module(m).__file__ for m in sys.argv[1:]}\n"
        "print(json.dumps({'newsletter': newsletter.__file__, 'path': sys.path, 'deps': mods}))\n"
    )
    where = run_process([str(python), "-c", probe, *DEPENDENCY_MODULES], site_dir, env)
    assert where.returncode == 0, where.stdout + where.stderr
    seen = json.loads(where.stdout)
    # newsletter is the wheel's copy, never the source tree
    assert Path(seen["newsletter"]).resolve().is_relative_to(env_dir.resolve()), seen
    assert not Path(seen["newsletter"]).resolve().is_relative_to(ROOT / "newsletter"), seen
    # the base interpreter's site-packages are not on the path unless the running environment
    # has them too: on a fresh machine the test needs nothing installed globally
    running = {str(Path(p).resolve()) for p in running_site_dirs()}
    leaked = [p for p in seen["path"] if str(Path(p).resolve()) in set(base_site_dirs()) - running]
    assert leaked == [], f"the test venv sees the base interpreter's packages: {leaked}"
    for module, file in seen["deps"].items():
        assert any(Path(file).resolve().is_relative_to(d) for d in running), (module, file)
    for args in (["subscribers", "add", "reader@example.org"], ["send"]):
        done = run_process([str(env_dir / "bin" / "newsletter"), *args], site_dir, env)
        assert done.returncode == 0, done.stdout + done.stderr
    emails = list((site_dir / "outbox").glob("*.eml"))
    assert len(emails) == 1
    assert b"multipart/alternative" in emails[0].read_bytes()


def _has_hatchling() -> bool:
    try:
        import hatchling  # noqa: F401
    except ImportError:
        return False
    return True
