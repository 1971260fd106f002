"""Test seam: a real `newsletter send` process that stops dead at a chosen point (kill -9 tests).

Put this folder first on PYTHONPATH and set NEWSLETTER_TEST_PAUSE_AT to `create_issue:N`
(the N-th issue about to be made) or `deliver:N` (the N-th issue about to be delivered),
and NEWSLETTER_TEST_PAUSE_FILE to a path. Python imports this `sitecustomize` at start-up;
the N-th call of that function in the process writes the file and then sleeps until the
test kills the process, so the kill lands at a known point and never needs a timing guess.
The project never reads these names; without them this file does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _install() -> None:
    where = os.environ.get("NEWSLETTER_TEST_PAUSE_AT")
    marker = os.environ.get("NEWSLETTER_TEST_PAUSE_FILE")
    if not where or not marker:
        return
    name, _, nth = where.partition(":")
    module: Any
    if name == "create_issue":
        from newsletter.issues import create as module  # run.py calls it through the module
    elif name == "deliver":
        from newsletter.sending import run as module  # run.py's own name for deliver
    else:
        raise SystemExit(f"NEWSLETTER_TEST_PAUSE_AT: unknown point {name!r}")
    original = getattr(module, name)
    calls = 0

    def paused(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == int(nth):
            Path(marker).write_text(str(os.getpid()), encoding="utf-8")
            while True:  # until SIGKILL
                time.sleep(60)
        return original(*args, **kwargs)

    setattr(module, name, paused)


_install()
