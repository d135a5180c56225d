"""Route chains as text: each link with its circuit state, then the canned answer if the route has one."""

from __future__ import annotations

from rich.text import Text
from textual.content import Content

from tui.schemas import RouteInfo

# The gateway creates a link's breaker on first use, and a breaker starts closed: no entry means closed.
UNUSED_STATE = "closed"
STATE_STYLE = {"closed": "green", "half_open": "yellow", "open": "red"}
ARROW = " → "


def link_state(breakers: dict[str, str], link: str) -> str:
    """The circuit state of one link."""
    return breakers.get(link, UNUSED_STATE)


def chain_parts(route: RouteInfo, breakers: dict[str, str]) -> list[tuple[str, str]]:
    """(text, style) pieces of `a (closed) → b (open) → canned`; names stay plain text (tui/literal.py)."""
    parts: list[tuple[str, str]] = []
    for link in route.links:
        state = link_state(breakers, link)
        parts += [(ARROW, ""), (f"{link} ", ""), (f"({state})", STATE_STYLE.get(state, "bold"))]
    if route.canned is not None:
        parts += [(ARROW, ""), ("canned", "")]
    return parts[1:] or [("(empty)", "")]


def chain_text(route: RouteInfo, breakers: dict[str, str]) -> Text:
    """The chain for a table cell (Rich), each state coloured."""
    return Text.assemble(*chain_parts(route, breakers))


def chain_content(route: RouteInfo, breakers: dict[str, str]) -> Content:
    """The chain for a Static (Textual), each state coloured."""
    return Content.assemble(*chain_parts(route, breakers))
