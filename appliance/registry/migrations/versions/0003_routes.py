"""Create routes: public model names mapped to fallback chains, as edited through the admin API.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the routes table."""
    op.create_table(
        "routes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("links", sa.JSON(), nullable=False),
        sa.Column("canned", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the routes table."""
    op.drop_table("routes")
