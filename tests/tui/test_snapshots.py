"""Every screen of the console at 80x24 and 120x40, over fixed data: at 80x24 each footer shows all its
hints, `? Help` first (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tui.fixed import fixed_app

SIZES = [(80, 24), (120, 40)]
# Keys that bring each screen up; "_" lets the screen's data worker finish first.
SCREENS = {
    "overview": ["_"],
    "models": ["2", "_"],
    "model_unload_confirm": ["2", "_", "u", "_"],
    "model_import": ["2", "_", "i", *"/srv/models/qwen.gguf"],
    "model_versions": ["2", "_", "a", "_"],
    "version_confirm": ["2", "_", "a", "_", "enter", "_"],
    "version_activated": ["2", "_", "a", "_", "enter", "_", "y", "_", "_"],
    "keys": ["3", "_"],
    "audit": ["4", "_"],
    "audit_row": ["4", "_", "enter", "_"],
    "help": ["question_mark", "_"],
    "revoke_confirm": ["3", "_", "down", "x", "_"],
    "key_shown": ["3", "_", "n", *"ci", "enter", "_", "_"],
    "routes": ["5", "_"],
    "routes_edited": ["5", "_", "d", "_"],
    "route_add_link": ["5", "_", "down", "_", "a", "_", "_"],
    "route_link_added": ["5", "_", "down", "_", "a", "_", "_", "enter", "_"],
    "route_save_confirm": ["5", "_", "d", "s", "_"],
    "store": ["6", "_"],
    "store_passphrase": ["6", "_", "u", *"secret", "_"],
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen(snap_compare: Any, screen: str, size: tuple[int, int]) -> None:
    """The screen looks as it did when the snapshot was reviewed."""
    assert snap_compare(fixed_app(), press=SCREENS[screen], terminal_size=size)
