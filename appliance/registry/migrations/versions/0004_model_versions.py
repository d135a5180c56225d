"""Model versions: several rows may share a name, one of them active (blue-green activation, issue 7).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
"""0001 made `models.name` unique without naming the constraint; reflection names it by this rule."""


def _rebuild_models(change: str) -> None:
    """Recreate `models` (SQLite alters a constraint only so) without losing the store's key rows.

    With foreign keys on, dropping the old table deletes every `model_keys` row through ON DELETE
    CASCADE, and inside a transaction the pragma cannot be switched off: keep the rows and put them back.
    """
    bind = op.get_bind()
    keys = sa.table(
        "model_keys",
        sa.column("model_id"),
        sa.column("file_id"),
        sa.column("wrapped_key"),
        sa.column("kek_fingerprint"),
        sa.column("stored_bytes"),
        sa.column("created_at"),
    )
    kept = [dict(row._mapping) for row in bind.execute(sa.select(keys))]
    with op.batch_alter_table("models", naming_convention=NAMING, recreate="always") as batch:
        if change == "upgrade":
            batch.add_column(sa.Column("version", sa.String(32), nullable=False, server_default="1"))
            batch.add_column(sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()))
            batch.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
            batch.drop_constraint("uq_models_name", type_="unique")
            batch.create_unique_constraint("uq_models_name_version", ["name", "version"])
        else:
            batch.drop_constraint("uq_models_name_version", type_="unique")
            batch.drop_column("activated_at")
            batch.drop_column("active")
            batch.drop_column("version")
            batch.create_unique_constraint("uq_models_name", ["name"])
    bind.execute(sa.delete(keys))
    if kept:
        bind.execute(sa.insert(keys), kept)


def upgrade() -> None:
    """Every existing model becomes version 1 of its name, active."""
    _rebuild_models("upgrade")


def downgrade() -> None:
    """Keep only the active version of each name, then restore the one-row-per-name schema."""
    op.execute("DELETE FROM models WHERE active = 0")
    _rebuild_models("downgrade")
