"""A circuit breaker per link of a fallback chain: a pure state machine on an injected clock.

Invariants:
- CLOSED lets every request through; `failure_threshold` consecutive failures open it.
- OPEN lets nothing through until `cooldown_s` has passed since it opened; then it reads HALF_OPEN.
- HALF_OPEN lets one trial request through at a time; its success closes the circuit, its failure
  opens it again for a full cooldown.
- A failed deep probe opens the circuit at once, whatever its state; a passed probe closes it, because a
  probe is a real inference and so as good a trial as any request.
- `on_change` hears each state a caller can see, once, in order. OPEN turns HALF_OPEN by the clock alone,
  so that one is told when it is first seen (the next request, probe or `state` read), not at the instant.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    """Whether a link takes traffic."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of one link and decides whether it may take a request."""

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float],
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self._told = BreakerState.CLOSED
        self._threshold = max(1, failure_threshold)
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._open = False
        self._opened_at = 0.0
        self._failures = 0
        self._trial_running = False
        self.opened_count = 0
        """How many times the circuit opened (it only grows; used to notice an opening)."""

    @property
    def state(self) -> BreakerState:
        """The state now, the cooldown taken into account."""
        return self._tell()

    def _tell(self) -> BreakerState:
        """The state now, told to `on_change` if the last one told differs."""
        state = self._state_now()
        if state is not self._told:
            self._told = state
            if self._on_change is not None:
                self._on_change(state)
        return state

    def _state_now(self) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def would_allow(self) -> bool:
        """Whether a request could pass now, without claiming the half-open trial."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_running)

    def acquire(self) -> bool:
        """Whether a request may go to the link now; in HALF_OPEN this claims the single trial."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        """A request (or probe) succeeded: the circuit closes and the failure count starts over."""
        self._open = False
        self._failures = 0
        self._trial_running = False
        self._tell()

    def record_failure(self) -> None:
        """A request failed for a reason that is the link's fault; enough of them in a row open it."""
        self._failures += 1
        if self._open or self._failures >= self._threshold:
            self._trip()

    def release(self) -> None:
        """A trial request ended with neither success nor link failure (the client's own error)."""
        self._trial_running = False

    def probe_failed(self) -> None:
        """The deep probe failed: open at once."""
        self._failures = max(self._failures, self._threshold)
        self._trip()

    def probe_passed(self) -> None:
        """The deep probe answered: close."""
        self.record_success()

    def _trip(self) -> None:
        if not self._open or self.state is not BreakerState.OPEN:
            self.opened_count += 1
        self._open = True
        self._opened_at = self._clock()
        self._trial_running = False
        self._tell()
