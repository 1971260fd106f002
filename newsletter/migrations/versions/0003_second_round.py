"""second round: confirmation token issued-at, bounce matching, worker identity

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 08:00:00
"""

import sqlalchemy as sa  # noqa: F401
import sqlmodel  # noqa: F401
from alembic import op  # noqa: F401

import newsletter.models  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- section: subscribers / web (confirmation tokens) --
    # -- section: bounces (matching) --
    # -- section: sending (worker identity) --
    pass


def downgrade() -> None:
    # -- section: sending (worker identity) --
    # -- section: bounces (matching) --
    # -- section: subscribers / web (confirmation tokens) --
    pass
