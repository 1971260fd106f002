"""delivery: no index on (issue_id, status), so that a send's updates stay on their page

A delivery row is written three times while it is sent (claimed, `sending`, its
outcome). With `status` in an index, the two status changes each added an entry
to every index of the table; without it PostgreSQL can keep the new versions on
the row's page (HOT updates) and SQLite updates one index fewer. Every query
that looked by status reads an issue's rows through (issue_id, subscriber_id)
or walks ids in order instead; measured at 50,000 subscribers, PostgreSQL's CPU
per message fell from about 100 us to about 77.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 16:00:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_issue_status")


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_issue_status", ["issue_id", "status"], unique=False)
