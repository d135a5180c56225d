"""The client address of each audit event (issue 17): a flood of failed keys is summed up per address.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add audit_events.client; older events keep "" (the address was never recorded)."""
    op.add_column("audit_events", sa.Column("client", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    """Drop audit_events.client in place (SQLite 3.35+), as 0005 does for its column."""
    op.execute("ALTER TABLE audit_events DROP COLUMN client")
