"""The encrypted model store: streaming AEAD files, wrapped data keys, loading without plaintext on disk."""
