"""delivery: no foreign keys to issue and subscriber, so that an issue's rows go in fast

Making an issue inserts one delivery row per active subscriber. PostgreSQL checks
a foreign key row by row (an index lookup and a FOR KEY SHARE lock on the
referenced row), and the two keys cost about 1 s of the 1.4 s that 100,000 rows
took. What the keys guarded is kept otherwise:
- issues are never deleted;
- a subscriber is deleted with its deliveries (`subscribers forget`), and that erasure
  and the INSERT of an issue's deliveries exclude each other (db.fence_erasures);
- a delivery whose subscriber is gone anyway (a hand edit) is settled `skipped` at
  the start of the next send (sending/queue.py, settle_erased), so its issue ends.
SQLite rebuilds the table (its way of dropping a constraint: a copy of every row,
under the write lock); PostgreSQL drops both. The downgrade first deletes the
deliveries that the keys would refuse.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: names for the keys, which 0001 created unnamed: PostgreSQL's own (table_column_fkey),
#: given to SQLite's reflected copy too so that one name drops them everywhere
_NAMES = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
_KEYS = (
    ("delivery_issue_id_fkey", "issue_id", "issue"),
    ("delivery_subscriber_id_fkey", "subscriber_id", "subscriber"),
)


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None, naming_convention=_NAMES) as batch_op:
        for name, _column, _table in _KEYS:
            batch_op.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    # Deliveries whose subscriber or issue row is gone (settled `skipped` by a send) would
    # break the keys: they go, and the bounce reports that name them keep the report only.
    delivery = sa.table(
        "delivery", sa.column("id"), sa.column("subscriber_id"), sa.column("issue_id")
    )
    subscriber, issue = sa.table("subscriber", sa.column("id")), sa.table("issue", sa.column("id"))
    bounce_event = sa.table("bounce_event", sa.column("delivery_id"))
    orphans = sa.select(delivery.c.id).where(
        sa.or_(
            ~sa.exists().where(subscriber.c.id == delivery.c.subscriber_id),
            ~sa.exists().where(issue.c.id == delivery.c.issue_id),
        )
    )
    op.execute(
        sa.update(bounce_event)
        .where(bounce_event.c.delivery_id.in_(orphans))
        .values(delivery_id=None)
    )
    op.execute(sa.delete(delivery).where(delivery.c.id.in_(orphans)))
    with op.batch_alter_table("delivery", schema=None, naming_convention=_NAMES) as batch_op:
        for name, column, table in _KEYS:
            batch_op.create_foreign_key(name, table, [column], ["id"])
