"""Serving: keeping workers running for the models the registry enables (the supervisor moves here)."""
