"""The one liveness rule: a process that cannot beat again is dead, a zombie included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from newsletter.sending.lease import pid_alive


def test_a_running_process_is_alive_and_a_killed_unreaped_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        # not waited for yet: a zombie still answers signal 0, yet will never beat again
        deadline = time.monotonic() + 10
        while pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


def test_this_process_is_alive() -> None:
    assert pid_alive(os.getpid())
