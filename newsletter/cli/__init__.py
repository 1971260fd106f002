"""The command line: thin commands over the core services (the core never imports click)."""

# Command modules register themselves on `main` when imported.
from newsletter.cli import bounces as _bounces  # noqa: E402,F401
from newsletter.cli import contacts as _contacts  # noqa: E402,F401
from newsletter.cli import dkim as _dkim  # noqa: E402,F401
from newsletter.cli import doctor as _doctor  # noqa: E402,F401
from newsletter.cli import sending as _sending  # noqa: E402,F401
from newsletter.cli import serve as _serve  # noqa: E402,F401
from newsletter.cli.app import main

__all__ = ["main"]
