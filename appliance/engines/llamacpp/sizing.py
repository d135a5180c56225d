"""How a llama.cpp worker is sized: slots and the cells of the KV pool they share (no llama.cpp import, so
the planner can use it)."""

from __future__ import annotations

SLOTS_PER_THREAD = 4
MAX_DEFAULT_SLOTS = 16


def default_parallel(threads: int) -> int:
    """Slots from cores: a slot no longer costs context (the pool is shared), so four per compute thread,
    which keeps the batch busy on a CPU without making each step slow, and at most 16."""
    return max(1, min(SLOTS_PER_THREAD * max(threads, 1), MAX_DEFAULT_SLOTS))


def pool_size(context_length: int, parallel: int, kv_pool_tokens: int) -> int:
    """The cells of a worker's pool: the setting, else room for every slot's full context; never less
    than one full sequence, so any request that passes the context check can run alone."""
    return max(kv_pool_tokens or context_length * parallel, context_length)
