"""The scrypt cost of a passphrase-mode store's KEK (issue 17): NULL is the 2^15 of stores made before.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add store_kek.scrypt_n; an existing passphrase store keeps unlocking with the cost it was made with."""
    op.add_column("store_kek", sa.Column("scrypt_n", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop store_kek.scrypt_n in place (SQLite 3.35+); a store rotated at a higher cost will not unlock on
    the older version."""
    op.execute("ALTER TABLE store_kek DROP COLUMN scrypt_n")
