"""What the test servers that own a scratch folder share: start, stop, `with`.

A server's `start()` returns it once it answers; `stop()` ends what it runs
and then removes the scratch folder made for it (a CA certificate, a
configuration file, a log), so `with Server(...) as server:` leaves nothing
behind, whichever way the test ends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Self


class ScratchServer:
    """Base of a test server: a context manager whose scratch folder goes at stop()."""

    _tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _stop_serving(self) -> None:
        """End what the server runs (a thread, a process); called by stop(), may repeat."""
        raise NotImplementedError

    def _scratch_folder(self, prefix: str) -> Path:
        """A new temporary folder, removed by stop()."""
        self._tmpdir = tempfile.TemporaryDirectory(prefix=prefix)
        return Path(self._tmpdir.name)

    def stop(self) -> None:
        self._stop_serving()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
