"""After the send: bounce and complaint reports, read and applied.

Owns reading a report (dsn: DSN, ARF, heuristics; pure), the mailboxes they
come from (mailbox: mbox, Maildir, IMAP), matching each report to its
Delivery by VERP token or Message-ID (match), then recording it and the
suppression policy (record).

May import: mail/ (verp, addresses), issues/ and the foundation. Never
sending/, subscribers/, doctor/ (siblings) or the edges.
"""
