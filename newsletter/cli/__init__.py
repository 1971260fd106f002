"""Edge: the `newsletter` command line (click); each command calls one core function and prints.

Owns parsing options, printing results, and the one place where a
NewsletterError becomes one line on stderr and exit 1 (app.py).

May import: everything (web/ for `serve`, status, the services, mail/, issues/,
the foundation). Only `python -m newsletter` imports it; nothing outside it imports click.
"""

# Command modules register themselves on `main` when imported.
from newsletter.cli import bounces as _bounces  # noqa: F401
from newsletter.cli import contacts as _contacts  # noqa: F401
from newsletter.cli import dkim as _dkim  # noqa: F401
from newsletter.cli import doctor as _doctor  # noqa: F401
from newsletter.cli import form as _form  # noqa: F401
from newsletter.cli import sending as _sending  # noqa: F401
from newsletter.cli import serve as _serve  # noqa: F401
from newsletter.cli.app import main

__all__ = ["main"]
