"""Route chains as text: each link with its circuit state, then the canned answer if the route has one."""

from __future__ import annotations

from rich.markup import escape

from tui.schemas import RouteInfo

# The gateway creates a link's breaker on first use, and a breaker starts closed: no entry means closed.
UNUSED_STATE = "closed"
STATE_STYLE = {"closed": "green", "half_open": "yellow", "open": "red"}


def link_state(breakers: dict[str, str], link: str) -> str:
    """The circuit state of one link."""
    return breakers.get(link, UNUSED_STATE)


def chain_text(route: RouteInfo, breakers: dict[str, str]) -> str:
    """`a (closed) → b (open) → canned` with Rich markup colouring each state."""
    parts = []
    for link in route.links:
        state = link_state(breakers, link)
        parts.append(f"{escape(link)} [{STATE_STYLE.get(state, 'bold')}]({state})[/]")
    if route.canned is not None:
        parts.append("canned")
    return " → ".join(parts) or "(empty)"
