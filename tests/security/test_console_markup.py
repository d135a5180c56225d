"""Server text in the console is shown literally: hostile names, targets and errors on every screen, with
Pilot over a fixed admin source; nothing crashes, nothing is restyled, every toast is plain text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from textual.screen import Screen
from textual.widgets import DataTable, OptionList, Static

import tui.app
from tests.tui.fixed import OVERVIEW, FixedSource
from tests.tui.helpers import until
from tui.app import ConsoleApp
from tui.client import AdminApiError
from tui.history import MetricsHistory
from tui.schemas import (
    Activated,
    AuditEvent,
    Engine,
    ErrorEvent,
    Gpu,
    Hardware,
    Job,
    JobError,
    Key,
    Model,
    ModelVersion,
    Overview,
    RouteInfo,
    Routes,
    StoredModel,
    Verified,
)
from tui.screens.add_link import AddLinkScreen
from tui.screens.audit import AuditScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.import_model import ImportModelScreen
from tui.screens.keys import KeysScreen
from tui.screens.models import ModelsScreen
from tui.screens.routes import RoutesScreen
from tui.screens.row import RowScreen
from tui.screens.store import StoreScreen
from tui.screens.versions import VersionsScreen

# Each would break or restyle the screen read as markup; `escape` alone misses the last three.
CLOSING = "[/x]"  # a closing tag with no opening one: MarkupError, the console dies
HOSTILE = [
    CLOSING,
    "[link=file:///etc/passwd]doc[/link]",
    "[@click=app.quit]q[/]",
    "[b]bold[/b]",
    "[red on blue]c",
    "[B]upper[/B]",
    "[$accent]v",
    "[ b]sp",
]
MODEL, OTHER = "[b]m[/b]", "[@click=app.quit]q[/]"
ROUTES = Routes(data=(RouteInfo("[/x]route", (MODEL,), None),), breakers={MODEL: "[b]open[/b]"})


def _overview() -> Overview:
    return msgspec.structs.replace(
        OVERVIEW,
        hardware=Hardware(gpus=(Gpu(index=0, name="[$accent]gpu", memory_total_mib=1024),)),
        engines=(Engine(model=MODEL, state="[red]ready", last_exit=CLOSING),),
        not_started={OTHER: "[B]upper[/B]"},
        errors=(ErrorEvent("2026-01-31T10:00:00", "auth.failed", "POST /v1/[/x]", "[ b]sp"),),
        routes=ROUTES.data,
        breakers=ROUTES.breakers,
        gpu_usage=(),
    )


class HostileSource(FixedSource):
    """The fixed source with markup in every string the gateway could send back."""

    async def overview(self) -> Overview:
        """Hostile engine names, exits, errors, routes and GPU name."""
        return _overview()

    async def models(self) -> list[Model]:
        """Two models with hostile names, aliases and quantization."""
        return [
            Model(MODEL, "gguf", "[link=x]q[/link]", 1000, "enabled", (CLOSING,), "llama", 2048, "1"),
            Model(OTHER, "gguf", "Q4", 1000, "disabled"),
        ]

    async def model_versions(self, name: str) -> list[ModelVersion]:
        """Two versions, the first serving."""
        return [ModelVersion(name, "1", True, "gguf", "[$accent]v"), ModelVersion(name, "2", False)]

    async def activate_version(self, name: str, version: str) -> Activated:
        """Refused, with the gateway's hostile reason."""
        raise AdminApiError(409, f"check failed: {CLOSING}")

    async def import_model(self, path: str, name: str, encrypt: bool) -> Job:
        """A job that failed with a hostile message."""
        return Job("j1", "models.import", name, "failed", 0, 0, JobError(f"{path}: [/x] refused"))

    async def import_bundle(self, path: str) -> Job:
        """A bundle's job that failed with a hostile message."""
        return Job("j2", "models.import_bundle", path, "failed", 0, 0, JobError(f"{path}: [/x] refused"))

    async def keys(self) -> list[Key]:
        """A key with a hostile name."""
        return [Key("a1b2c3d4e5f6", "[@click=app.quit]q[/]", "user", "2026-01-30T09:00:00")]

    async def audit(self, limit: int = 500) -> list[AuditEvent]:
        """Hostile targets (request paths) and details."""
        when = "2026-01-31T10:00:00"
        return [AuditEvent(1, when, "auth.failed", "denied", None, "/v1/[/x]", "[B]upper[/B]", "[b]10.0.0.9")]

    async def routes(self) -> Routes:
        """A route with a hostile name, link and circuit state."""
        return ROUTES

    async def stored_models(self) -> list[StoredModel]:
        """The store's view of the two models."""
        return [StoredModel(MODEL, True, 1000, 1100), StoredModel(OTHER, False, 1000)]

    async def verify_model(self, name: str) -> Verified:
        """Verified, under its hostile name."""
        return Verified(name, True, "0" * 64)

    async def store_status(self) -> dict[str, Any]:
        """Hostile keys and values in the status."""
        return {"mode": "[b]keyfile[/b]", "locked": False, "note": CLOSING}


def shown(screen: Screen[Any]) -> str:
    """What the screen's text widgets draw, all whitespace removed (a long line may wrap anywhere)."""
    parts: list[str] = []
    for widget in screen.query("*"):
        if isinstance(widget, (Static, DataTable, OptionList)) and widget.size.area:
            parts += [widget.render_line(y).text for y in range(widget.size.height)]
    return "".join("".join(parts).split())


def _plain(text: str) -> str:
    return "".join(text.split())


async def _shows(pilot: Any, app: ConsoleApp, *texts: str) -> None:
    for text in texts:
        await until(pilot, lambda text=text: _plain(text) in shown(app.screen), f"the literal {text!r}")  # type: ignore[misc]


async def _press(pilot: Any, app: ConsoleApp, then: type[Screen[Any]], *keys: str) -> None:
    """Press `keys`, then wait for the screen they lead to (a key sent mid-transition goes astray)."""
    await pilot.press(*keys)
    await until(pilot, lambda: isinstance(app.screen, then), then.__name__)


def hostile_app() -> ConsoleApp:
    """The console over the hostile source."""
    return ConsoleApp(HostileSource(), poll_s=None, history=MetricsHistory(), where="http://127.0.0.1:8080")


class ToastKeepingApp(ConsoleApp):
    """The console whose toasts stay up: after 5 s they would be gone before the end on a slow machine."""

    NOTIFICATION_TIMEOUT = 3600
    CSS_PATH = str(Path(tui.app.__file__).with_name("app.tcss"))  # relative paths resolve beside the subclass


async def test_every_screen_shows_hostile_text_literally() -> None:
    """Overview, models (and its dialogs), keys, audit, routes (and add link), store: the text as sent."""
    app = ToastKeepingApp(
        HostileSource(), poll_s=None, history=MetricsHistory(), where="http://127.0.0.1:8080"
    )
    async with app.run_test(size=(200, 60)) as pilot:
        await _shows(pilot, app, MODEL, CLOSING, "[red]ready", "[B]upper[/B]", "POST/v1/[/x]", "[ b]sp")
        await _shows(pilot, app, "[$accent]gpu", "[/x]route:", "[b]m[/b] ([b]open[/b])")

        await pilot.press("2")
        await _shows(pilot, app, MODEL, OTHER, "[link=x]q[/link]", CLOSING)
        await _press(pilot, app, VersionsScreen, "a")  # the versions dialog names the model
        await _shows(pilot, app, f"Versions of {MODEL}", "[$accent]v")
        await _press(pilot, app, ConfirmScreen, "down", "a")  # then the gateway refuses, hostile reason
        await _shows(pilot, app, f"version 2 of {MODEL}")
        await _press(pilot, app, ModelsScreen, "y")
        await _shows(pilot, app, f"refused: check failed: {CLOSING}")
        await pilot.press("v")
        await _shows(pilot, app, f"{MODEL} verified")
        await _press(pilot, app, ConfirmScreen, "x")
        await _shows(pilot, app, f"Remove model {MODEL!r}")
        await _press(pilot, app, ModelsScreen, "n")
        await _press(pilot, app, ImportModelScreen, "i")
        await _press(pilot, app, ModelsScreen, *"/srv/[b]x[/b].gguf", "enter")
        await _shows(pilot, app, "/srv/[b]x[/b].gguf: [/x] refused")

        await _press(pilot, app, KeysScreen, "3")
        await _shows(pilot, app, "[@click=app.quit]q[/]")
        await _press(pilot, app, ConfirmScreen, "x")
        await _shows(pilot, app, "Revoke key a1b2c3d4e5f6 ([@click=app.quit]q[/])")
        await _press(pilot, app, KeysScreen, "n")
        await _press(pilot, app, AuditScreen, "4")
        await _shows(pilot, app, "/v1/[/x]", "[B]upper[/B]", "[b]10.0.0.9")
        await _press(pilot, app, RoutesScreen, "5")
        await _shows(pilot, app, "[/x]route", "[b]open[/b]", "[/x]route: 1 link(s)")
        await _press(pilot, app, AddLinkScreen, "a")  # the candidates are model names
        await _shows(pilot, app, "Add a link to [/x]route", OTHER)
        await _press(pilot, app, RoutesScreen, "escape")
        await _press(pilot, app, StoreScreen, "6")
        await _shows(pilot, app, "[b]keyfile[/b]", CLOSING)
    assert app.return_code in (None, 0)  # no crash, and `[@click=app.quit]` quit nothing
    assert app._notifications, "the test meant to raise toasts"
    assert all(not n.markup for n in app._notifications)


@pytest.mark.parametrize("text", HOSTILE)
async def test_toasts_are_literal_even_when_a_screen_asks_for_markup(text: str) -> None:
    """The app's notify ignores markup=True: a toast can carry a gateway error verbatim."""
    app = hostile_app()
    async with app.run_test(size=(120, 40)) as pilot:
        app.notify(text, title=text, markup=True)
        await pilot.pause()
        toast = app._notifications
    assert [(n.message, n.markup) for n in toast] == [(text, False)]


async def test_an_opened_row_shows_hostile_text_literally() -> None:
    """Enter on a row (issue 18) shows every cell whole, as sent: the audit's target, detail and client,
    the key's name; `[@click=app.quit]` quits nothing."""
    app = hostile_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _press(pilot, app, AuditScreen, "4")
        await _shows(pilot, app, "/v1/[/x]")
        await _press(pilot, app, RowScreen, "enter")
        await _shows(pilot, app, "/v1/[/x]", "[B]upper[/B]", "[b]10.0.0.9")
        await _press(pilot, app, AuditScreen, "escape")
        await _press(pilot, app, KeysScreen, "3")
        await _shows(pilot, app, "a1b2c3d4e5f6")  # the name itself is cut at 80 columns
        await _press(pilot, app, RowScreen, "enter")
        await _shows(pilot, app, "[@click=app.quit]q[/]")
    assert app.return_code in (None, 0)
