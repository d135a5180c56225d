"""The offline bundle verifier and installer (issue 4)."""
