"""The scheduler's slots and what it keeps of a preempted sequence, and the pool's bookkeeping over them.

A slot's `cells` are the tokens whose KV cells its sequence holds, in its own stream or in the pool all slots
share (see native.NativeContext); a finished sequence keeps them as a prefix cache until the room is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.engines.llamacpp.core import TokenLogprob
from appliance.engines.llamacpp.outbox import PendingRequest
from appliance.engines.llamacpp.text_stream import TextStream


@dataclass(eq=False)
class Slot:
    """One sequence of the context: the request it serves now, and the cells it holds."""

    seq: int
    cells: list[int] = field(default_factory=list)
    """Tokens whose cells this sequence holds, in position order (kept after a request for prefix reuse)."""
    request: PendingRequest | None = None
    feed: list[int] = field(default_factory=list)
    """What the sequence evaluates before it generates: the prompt, or after a preemption the prompt and
    the tokens generated so far (recomputed)."""
    resume_token: int | None = None
    """After a preemption, the token sampled but not yet decoded: generation goes on from it."""
    admitted: int = 0
    """Admission order: the most recently admitted running sequence is the one preempted."""
    sampler: Any = None
    """The request's llama.cpp sampler chain; None for plain greedy, which is an argmax over the logits."""
    grammar: Any = None
    """The request's grammar sampler, applied apart from the chain; None without a grammar."""
    text: TextStream = field(default_factory=lambda: TextStream(()))
    prefill_at: int = 0
    next_token: int | None = None
    generated: int = 0
    cached: int = 0
    released_at: float = 0.0
    history: list[int] = field(default_factory=list)
    """Tokens generated so far, kept only when log probabilities are asked (their penalties look back)."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Log probabilities of tokens whose text is still held back."""

    def footprint(self) -> int:
        """Cells a running sequence holds or will hold before its next token: a bound, since cells it
        shares with another sequence are counted by both."""
        return max(len(self.cells), len(self.feed)) + 1


@dataclass(frozen=True)
class Resume:
    """A preempted sequence's state, kept while its request waits to be admitted again: its sampler (the
    random state and penalties go on), grammar position, held-back text and counts."""

    tokens: list[int]
    next_token: int | None
    sampler: Any
    grammar: Any
    text: TextStream
    generated: int
    cached: int
    history: list[int]
    logprobs: list[TokenLogprob]

    @staticmethod
    def of(slot: Slot) -> Resume:
        """What `slot` needs to go on later; the tokens to recompute are those it had decoded."""
        next_token: int | None
        if slot.next_token is not None:  # generating: its decoded tokens, then the one sampled last
            tokens, next_token = list(slot.cells), slot.next_token
        else:  # still evaluating its feed (a prompt, or an earlier resumption's tokens)
            tokens, next_token = list(slot.feed), slot.resume_token
        return Resume(
            tokens, next_token, slot.sampler, slot.grammar, slot.text, slot.generated, slot.cached,
            slot.history, slot.logprobs,
        )  # fmt: skip

    def restore(self, slot: Slot) -> None:
        """Give `slot` this state back (its cells are placed by the scheduler)."""
        slot.feed, slot.resume_token = self.tokens, self.next_token
        slot.sampler, slot.grammar, slot.text = self.sampler, self.grammar, self.text
        slot.generated, slot.cached = self.generated, self.cached
        slot.history, slot.logprobs = self.history, self.logprobs


@dataclass(eq=False)
class Work:
    """One slot's part of a batch: prompt chunk or one decode token, and whether it wants logits."""

    slot: Slot
    tokens: list[int]
    logits: bool


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share.

    Compares slices (C speed) and bisects to the first difference: the scheduler asks this for every
    slot and waiting request at each admission, over prompts of thousands of tokens."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    same, differs = 0, n  # a[:same] == b[:same]; a[:differs] != b[:differs]
    while differs - same > 1:
        middle = (same + differs) // 2
        if a[same:middle] == b[same:middle]:
            same = middle
        else:
            differs = middle
    return same


def cells_in_use(slots: Iterable[Slot]) -> int:
    """Cells the slots hold, a shared prefix counted once per sequence holding it (so at most the pool
    plus what sequences share)."""
    return sum(len(slot.cells) for slot in slots)


def eviction_order(slots: Iterable[Slot], wanted: list[int]) -> list[Slot]:
    """Idle slots holding cells, the first to lose them first: least use to `wanted` (the prompt waiting
    for room), then least recently used."""
    idle = [slot for slot in slots if slot.request is None and slot.cells]
    return sorted(idle, key=lambda slot: (common_prefix(slot.cells, wanted), slot.released_at))
