"""The statements of the ledger (ledger.py), one set per way of running them.

`CORE` (SQLAlchemy Core, any database; `CLAIMED` adds the claim fence of a
shared send), `SQLITE` (the sqlite3 driver, run directly: through SQLAlchemy
each cost more than the commit itself) and the `PG_` texts (psycopg, run
directly: one round trip per commit). The states are bound like any value
(`STATES`), so that they come from the enums in every dialect.
"""

from __future__ import annotations

import sqlalchemy as sa

from newsletter.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, table_of

D = table_of(Delivery)
S = table_of(Subscriber)

_P = sa.bindparam
_ACTIVE = sa.select(S.c.id).where(S.c.id == _P("sid"), S.c.status == SubscriberStatus.ACTIVE)
_FENCE = D.c.claimed_by == _P("me")  # shared sends: only the claimer may start it
CORE = {
    "start": sa.update(D)
    .where(D.c.id == _P("did"), D.c.status.in_(DeliveryStatus.OPEN), _ACTIVE.exists())
    .values(
        status=DeliveryStatus.SENDING,
        message_id=_P("mid"),
        attempts=D.c.attempts + 1,
        updated_at=_P("now"),
    ),
    "skip": sa.update(D)
    .where(D.c.id == _P("did"), D.c.status.in_(DeliveryStatus.OPEN))
    .values(status=DeliveryStatus.SKIPPED, updated_at=_P("now"), last_error=_P("why")),
    "finish": sa.update(D)
    .where(D.c.id == _P("did"))
    .values(
        status=_P("status"),
        last_error=_P("error"),
        updated_at=_P("now"),
        sent_at=_P("sent_at"),
        next_attempt_at=_P("next_at"),
        claimed_by=None,
        lease_until=None,
    ),
    "bounce": sa.update(S)
    .where(S.c.id == _P("sid"), S.c.status == SubscriberStatus.ACTIVE)
    .values(status=SubscriberStatus.BOUNCED, updated_at=_P("now")),
}
CLAIMED = {
    **CORE,
    "start": CORE["start"].where(_FENCE),
    "skip": CORE["skip"].where(_FENCE),
}
#: The same statements for SQLite's driver; the states are bound like any value
#: (`STATES`), so that they come from the enums as in the Core statements.
SQLITE = {
    "start": "UPDATE delivery SET status = :sending, message_id = :mid,"
    " attempts = attempts + 1, updated_at = :now"
    " WHERE id = :did AND status IN (:pending, :deferred) AND EXISTS"
    " (SELECT 1 FROM subscriber WHERE id = :sid AND status = :active)",
    "skip": "UPDATE delivery SET status = :skipped, updated_at = :now, last_error = :why"
    " WHERE id = :did AND status IN (:pending, :deferred)",
    "finish": "UPDATE delivery SET status = :status, last_error = :error, updated_at = :now,"
    " sent_at = :sent_at, next_attempt_at = :next_at WHERE id = :did",
    "bounce": "UPDATE subscriber SET status = :bounced, updated_at = :now"
    " WHERE id = :sid AND status = :active",
}
#: A plain `sent` outcome, the common case, recorded for many rows at once.
SQLITE_SENT = (
    "UPDATE delivery SET status = ?, last_error = NULL, updated_at = ?, sent_at = ?,"
    " next_attempt_at = NULL WHERE id = ?"
)
SENT = DeliveryStatus.SENT.value
#: The same bulk writes for psycopg (PostgreSQL); `claimed_by` is cleared as in "finish".
PG_SENT = (
    "UPDATE delivery SET status = %(sent)s, last_error = NULL, updated_at = %(now)s,"
    " sent_at = %(now)s, next_attempt_at = NULL, claimed_by = NULL, lease_until = NULL"
    " WHERE id = ANY(%(done)s)"
)
PG_START = (
    "UPDATE delivery AS d SET status = %(sending)s, message_id = v.mid,"
    " attempts = d.attempts + 1, updated_at = %(now)s"
    " FROM unnest(%(ids)s::bigint[], %(mids)s::text[]) AS v(id, mid)"
    " WHERE d.id = v.id AND d.status IN (%(pending)s, %(deferred)s) AND EXISTS"
    " (SELECT 1 FROM subscriber AS s WHERE s.id = d.subscriber_id AND s.status = %(active)s)"
)
PG_START_FENCED = PG_START + " AND d.claimed_by = %(me)s RETURNING d.id"
PG_START += " RETURNING d.id"
#: The common commit in one statement, run on its own (autocommit): the `sent` outcomes
#: and the sending marks in one round trip instead of four (BEGIN, two UPDATEs, COMMIT).
#: The two UPDATEs touch different rows (a delivery is finished only after it was started).
PG_BOTH = f"WITH done AS ({PG_SENT} RETURNING 1) {{start}}"
PG_BOTH_FENCED = PG_BOTH.format(start=PG_START_FENCED)
PG_BOTH = PG_BOTH.format(start=PG_START)
STATES = {
    "pending": DeliveryStatus.PENDING.value,  # pending and deferred: DeliveryStatus.OPEN
    "deferred": DeliveryStatus.DEFERRED.value,
    "sending": DeliveryStatus.SENDING.value,
    "skipped": DeliveryStatus.SKIPPED.value,
    "active": SubscriberStatus.ACTIVE.value,
    "bounced": SubscriberStatus.BOUNCED.value,
}
