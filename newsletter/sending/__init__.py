"""Delivery: an Issue's Delivery rows, sent over SMTP, crash-safe and resumable.

Read top to bottom: run (the whole `newsletter send`) -> sequence (which issues,
in what order; options: what the run was asked and what it did) -> deliver (one issue)
-> queue (due deliveries, recover, finish, reopen) -> dispatch (one pass over
SMTP connections) -> ledger (the per-message writes); beside them claims and
registry (several senders on PostgreSQL), lease (one liveness rule), lock
(one sender on SQLite), pacing (rate limits), policy (the knobs), connections
(the SMTP connection processes), work (the units handed around) and outcomes
(what a reply means).

Words: a *worker* is one `newsletter send` process (registry, claims); a
*connection* is one SMTP session it runs, in a child process (connections).

May import: mail/, issues/ and the foundation. Never subscribers/, bounces/,
doctor/ (siblings) or the edges.
"""
