"""The gateway: the Litestar app, OpenAI and admin routes, auth, errors, metrics, and the CLI."""
