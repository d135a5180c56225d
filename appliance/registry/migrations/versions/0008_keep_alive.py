"""A per-model keep-alive (issue 20): idle seconds before the gateway unloads the model; NULL = the setting.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add models.keep_alive_s; existing models follow `[residency] keep_alive_s`."""
    op.add_column("models", sa.Column("keep_alive_s", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop models.keep_alive_s in place (SQLite 3.35+): rebuilding the table would cascade-delete the
    store's key rows (see 0004)."""
    op.execute("ALTER TABLE models DROP COLUMN keep_alive_s")
