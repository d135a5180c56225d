"""Stand-in for vLLM in the containment tests (vLLM is not installed on CPU machines)."""
