"""second round: confirmation token issued-at, bounce matching, worker identity

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 08:00:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import newsletter.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- section: subscribers / web (confirmation tokens) --
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        for name in ("confirm_issued_at", "confirm_used_at", "confirm_send_at"):
            batch_op.add_column(
                sa.Column(name, newsletter.models.UTCDateTime(timezone=True), nullable=True)
            )
        batch_op.add_column(sa.Column("confirm_attempts", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("confirm_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_subscriber_confirm_send_at"), ["confirm_send_at"], unique=False
        )
    # an outstanding link keeps the age it had: it was issued at its last updated_at
    op.execute(
        "UPDATE subscriber SET confirm_issued_at = updated_at WHERE confirm_token IS NOT NULL"
    )
    # -- section: bounces (matching) --
    with op.batch_alter_table("bounce_event", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("matched_by", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
        )
    # -- section: sending (worker identity) --
    # where a pid means something: rows without one (older runs) are judged by lease only
    for table in ("send_worker", "send_lock"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("pid_space", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
            )


def downgrade() -> None:
    # -- section: sending (worker identity) --
    for table in ("send_lock", "send_worker"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("pid_space")
    # -- section: bounces (matching) --
    with op.batch_alter_table("bounce_event", schema=None) as batch_op:
        batch_op.drop_column("matched_by")
    # -- section: subscribers / web (confirmation tokens) --
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriber_confirm_send_at"))
        for name in (
            "confirm_error",
            "confirm_attempts",
            "confirm_send_at",
            "confirm_used_at",
            "confirm_issued_at",
        ):
            batch_op.drop_column(name)
