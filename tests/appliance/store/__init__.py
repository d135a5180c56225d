"""Tests of the encrypted model store."""
