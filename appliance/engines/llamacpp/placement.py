"""Where a new sequence starts: the free slot whose cells already hold the longest prefix of its prompt."""

from __future__ import annotations

from appliance.engines.llamacpp.native import NativeContext
from appliance.engines.llamacpp.slots import Slot, common_prefix

BOUNDARY_SLACK = 4
"""Cells a slot may lose and still be reused in place: the next turn of a conversation re-tokenises the end
of the previous answer, which may not match the tokens generated there."""


def place(
    slots: list[Slot], free: list[Slot], prompt: list[int], context: NativeContext, can_share_cells: bool
) -> Slot:
    """The free slot for `prompt`, its cells already holding the longest prefix any slot has.

    Always leaves at least the last prompt token to evaluate: its logits give the first completion token.
    A free slot holding the prefix is reused in place when that loses nothing worth keeping: it holds
    this very prompt (the same request again: what follows is only its old answer), or nothing beyond
    the prefix but a few tokens (the next turn of a conversation, re-tokenised at the old answer's end).
    Otherwise another free slot takes the request: one holding the same prefix already, else the least
    recently used, which shares the prefix's cells with the slot that holds them, busy or not
    (llama-server keeps a prompt cache in host memory for this), so a slot's cached conversation
    survives a request that only shares its system prompt.
    """
    limit = len(prompt) - 1
    holder = max(slots, key=lambda s: (common_prefix(s.cells, prompt), s.request is None))
    shared = min(common_prefix(holder.cells, prompt), limit)
    loses_little = shared == limit or len(holder.cells) - shared <= BOUNDARY_SLACK
    in_place = holder.request is None and (loses_little or not can_share_cells)
    if in_place:
        slot = holder
    else:
        # Another free slot holding the same prefix (documents asked about again and again leave several)
        # takes it without a copy: between own streams a copy moves the whole stream. Else the least
        # recently used. Either way the holder keeps its conversation.
        others = [s for s in free if s is not holder] or free
        slot = max(
            others, key=lambda s: (min(common_prefix(s.cells, prompt), limit) >= shared, -s.released_at)
        )
    keep = shared if slot is holder else min(common_prefix(slot.cells, prompt), limit)
    if not context.forget(slot.seq, keep):
        keep = 0
        context.forget(slot.seq, 0)
    del slot.cells[keep:]
    if keep < shared and can_share_cells:
        context.forget(slot.seq, 0)
        context.share(holder.seq, slot.seq, shared)
        slot.cells[:] = holder.cells[:shared]
    return slot


PREFIX_WAIT_MIN = 256
"""The shortest common start with a sequence still evaluating it that is worth waiting for rather than
evaluating it a second time beside it: a system prompt of a few dozen tokens is not (the wait costs a step,
and between own streams sharing copies a whole stream), a document is."""


def prefix_on_its_way(slots: list[Slot], prompt: list[int], can_share_cells: bool) -> bool:
    """Whether a running sequence is still evaluating a longer prefix of `prompt` than any slot holds: the
    request then waits until those cells are there and shares them (`place`), instead of evaluating the
    same tokens in parallel. Sixteen clients asking about four documents evaluate four documents, each at
    the whole batch's speed, not sixteen at a sixteenth of it. A prompt another sequence evaluates whole
    (the n choices of one request) always waits; a shorter common start than PREFIX_WAIT_MIN never does.
    Never blocks for long: the sequence it waits for advances every step, and once it is preempted,
    finished or cancelled the request no longer waits."""
    if not can_share_cells:
        return False
    limit = len(prompt) - 1
    held = max((min(common_prefix(slot.cells, prompt), limit) for slot in slots), default=0)
    for slot in slots:
        if slot.request is None or slot.next_token is not None:
            continue  # idle, or generating: whatever it holds of `prompt` is in its cells already
        coming = min(common_prefix(slot.feed, prompt), limit)
        if coming > held and (coming >= PREFIX_WAIT_MIN or coming == limit):
            return True
    return False
