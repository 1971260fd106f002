"""Edge: the subscriber-facing pages of `newsletter serve` (FastAPI).

Owns the routes (app: unsubscribe, signup, confirm, health), the page renderer
(pages), the web archive (archive), the per-IP signup limiter (throttle) and
the masking of tokens in logs (tokens).

May import: everything below the edges (status, the services, mail/, issues/,
the foundation). Nothing below imports it; the CLI's `serve` starts it.
"""
