"""How a llama.cpp worker is sized: slots and the cells of the KV pool they share (no llama.cpp import, so
the planner can use it)."""

from __future__ import annotations

SLOTS_PER_THREAD = 8
MAX_DEFAULT_SLOTS = 16


def default_parallel(threads: int) -> int:
    """Slots from cores: a slot no longer costs context, so eight per compute thread, at most 16. Sixteen
    clients asking about documents on two threads (bench/docqa_bench.py) then all start at once: with
    four per thread half of them waited a whole answer for a slot (TTFT p50 16.6 s against 0.9 s), while
    sequences that share a document's prefix cost one evaluation of it, not one each."""
    return max(1, min(SLOTS_PER_THREAD * max(threads, 1), MAX_DEFAULT_SLOTS))


def own_streams(pool_tokens: int, context_length: int, parallel: int) -> bool:
    """Whether the pool holds every slot's full context, so each slot gets a stream of its own.

    Then nothing ever waits for cells and a sequence attends only over its own stream: in one shared
    stream every decoded token scans every sequence's cells through the mask, which measured 1.4x the
    step time at 16 sequences of 200 tokens (bench/kv_layout_bench.py). The shared pool is for memory
    that cannot hold every slot's full context.
    """
    return parallel > 1 and pool_tokens >= context_length * parallel


def pool_size(context_length: int, parallel: int, kv_pool_tokens: int) -> int:
    """The cells of a worker's pool: the setting, else room for every slot's full context; never less
    than one full sequence, so any request that passes the context check can run alone."""
    return max(kv_pool_tokens or context_length * parallel, context_length)
