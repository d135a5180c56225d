"""The registry: models, API keys and the audit log in SQLite, migrated with Alembic."""
