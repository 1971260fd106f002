"""welcome email: its own column for the lease of a sender's try

Until now a try in progress was marked by setting `welcome_sent_at` ("it went")
together with a future `welcome_send_at`, so that a reader of the row could not
tell a try from a sent welcome. `welcome_claimed_until` is the lease alone.
A row leased the old way becomes one leased the new way, and back.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 17:10:00
"""

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SUB = sa.table(
    "subscriber",
    sa.column("welcome_send_at", newsletter.models.UTCDateTime(timezone=True)),
    sa.column("welcome_sent_at", newsletter.models.UTCDateTime(timezone=True)),
    sa.column("welcome_claimed_until", newsletter.models.UTCDateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "welcome_claimed_until",
                newsletter.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
    leased = sa.and_(_SUB.c.welcome_send_at.is_not(None), _SUB.c.welcome_sent_at.is_not(None))
    op.execute(
        _SUB.update()
        .where(leased)
        .values(welcome_claimed_until=_SUB.c.welcome_send_at, welcome_sent_at=None)
    )


def downgrade() -> None:
    op.execute(
        _SUB.update()
        .where(_SUB.c.welcome_claimed_until.is_not(None))
        .values(
            welcome_send_at=_SUB.c.welcome_claimed_until,
            welcome_sent_at=_SUB.c.welcome_claimed_until,
        )
    )
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_column("welcome_claimed_until")
