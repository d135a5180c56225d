"""Benchmarks that print figures side by side with a peer; never part of pass/fail."""
