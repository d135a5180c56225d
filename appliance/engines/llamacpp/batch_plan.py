"""One scheduler step's batch: which tokens of which sequences go into the next `llama_decode`.

Decode tokens come first (one per generating sequence, so running streams never stall behind a long
prompt), then chunks of pending prompts fill what is left of the batch's capacity.
"""

from __future__ import annotations

from typing import Any

from appliance.engines.llamacpp.core import WorkerCounters
from appliance.engines.llamacpp.slots import Slot, Work


def plan_batch(running: list[Slot], capacity: int, counters: WorkerCounters) -> list[Work]:
    """A decode token for each generating slot, then prompt chunks within `capacity` tokens."""
    work: list[Work] = []
    budget = capacity
    for slot in running:
        if slot.next_token is not None:
            work.append(Work(slot, [slot.next_token], logits=True))
            budget -= 1
    for slot in running:
        if slot.next_token is not None or budget <= 0:
            continue
        chunk = slot.feed[slot.prefill_at : slot.prefill_at + budget]
        counters.prompt_tokens_evaluated += len(chunk)
        # A resumed sequence already knows its next token: the end of its feed needs no logits.
        ends = slot.prefill_at + len(chunk) == len(slot.feed) and slot.resume_token is None
        work.append(Work(slot, chunk, logits=ends))
        budget -= len(chunk)
    return work


def fill_batch(batch: Any, work: list[Work]) -> None:
    """Write `work` into llama.cpp's batch struct: each sequence's tokens after the cells it holds."""
    n = 0
    for part in work:
        position = len(part.slot.cells)
        last = len(part.tokens) - 1
        for offset, token in enumerate(part.tokens):
            batch.token[n] = token
            batch.pos[n] = position + offset
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = part.slot.seq
            batch.logits[n] = part.logits and offset == last
            n += 1
    batch.n_tokens = n
