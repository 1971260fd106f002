"""One message: composed once per issue, filled per reader, signed, enveloped, moved.

Owns the MIME message (message), DKIM signing (dkim) and its keys (dkimkey), the
envelope sender with its signed VERP token (verp), address normal forms
(addresses) and the transports that move bytes: SMTP, outbox folder, in memory
(transport).
A new transport is a `BaseTransport` in transport.py, picked by `transport_factory`.

May import: issues/ (the rendered bodies and their placeholder) and the
foundation. Never the services or the edges.
"""
