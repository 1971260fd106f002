"""multi-worker sends and bounce events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 05:41:40.971195
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import newsletter.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "rate_budget",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("next_slot_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "send_worker",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("started_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"],
            ["issue.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("send_worker", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_send_worker_issue_id"), ["issue_id"], unique=False)

    op.create_table(
        "bounce_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status_code", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("diagnostic", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.Column("recipient", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("received_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["delivery.id"],
        ),
        sa.ForeignKeyConstraint(
            ["issue_id"],
            ["issue.id"],
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscriber.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bounce_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bounce_event_delivery_id"), ["delivery_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_bounce_event_issue_id"), ["issue_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_bounce_event_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_bounce_event_report_id"), ["report_id"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_bounce_event_subscriber_id"), ["subscriber_id"], unique=False
        )

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column("lease_until", newsletter.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("lease_until")
        batch_op.drop_column("claimed_by")

    with op.batch_alter_table("bounce_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bounce_event_subscriber_id"))
        batch_op.drop_index(batch_op.f("ix_bounce_event_report_id"))
        batch_op.drop_index(batch_op.f("ix_bounce_event_kind"))
        batch_op.drop_index(batch_op.f("ix_bounce_event_issue_id"))
        batch_op.drop_index(batch_op.f("ix_bounce_event_delivery_id"))

    op.drop_table("bounce_event")
    with op.batch_alter_table("send_worker", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_send_worker_issue_id"))

    op.drop_table("send_worker")
    op.drop_table("rate_budget")
