"""A per-model tool-call parser for vLLM (issue 15): NULL follows the model's architecture.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add models.tool_parser; existing models keep following their architecture."""
    op.add_column("models", sa.Column("tool_parser", sa.String(32), nullable=True))


def downgrade() -> None:
    """Drop models.tool_parser in place (SQLite 3.35+): rebuilding the table would cascade-delete the
    store's key rows (see 0004)."""
    op.execute("ALTER TABLE models DROP COLUMN tool_parser")
