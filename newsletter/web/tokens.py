"""Keeping tokens out of logs: an unsubscribe or confirm token in a URL is a password.

`TokenMaskingFilter` sits on uvicorn's access logger (see `app.log_config`) and
replaces the token in every logged path by `***`; `is_token_path` tells the
app's header middleware which responses must not be cached or indexed.
"""

from __future__ import annotations

import logging
import re

_TOKEN_PATH = re.compile(r"/(unsubscribe|confirm)/[^/?#\s\"]+")


def mask_tokens(text: str) -> str:
    """Replace every unsubscribe/confirm token in `text` by '***'."""
    return _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/***", text)


def is_token_path(path: str) -> bool:
    """A path that carries a token (or the bare token routes): no-store, noindex."""
    return _TOKEN_PATH.search(path) is not None or path.rstrip("/") in (
        "/unsubscribe",
        "/confirm",
    )


class TokenMaskingFilter(logging.Filter):
    """Masks tokens in uvicorn's access log lines (their path is the 3rd argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(mask_tokens(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = mask_tokens(record.msg)
        return True
