"""welcome email: when it is owed, when it went, how many attempts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:30:00
"""

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        for name in ("welcome_send_at", "welcome_sent_at"):
            batch_op.add_column(
                sa.Column(name, newsletter.models.UTCDateTime(timezone=True), nullable=True)
            )
        batch_op.add_column(sa.Column("welcome_attempts", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_subscriber_welcome_send_at"), ["welcome_send_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriber_welcome_send_at"))
        batch_op.drop_column("welcome_attempts")
        batch_op.drop_column("welcome_sent_at")
        batch_op.drop_column("welcome_send_at")
