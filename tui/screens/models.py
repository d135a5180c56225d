"""The model registry with the store's view: import, enable, disable, verify, switch versions, remove."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, ProgressBar, Static

from appliance.wire.residency import ResidencyReport, ResidentModel, budget_line, gib
from tui.client import AdminApiError, ConnectionLost
from tui.literal import literal_row
from tui.residency import residency_cells, unload_question
from tui.schemas import Activated, Job, Model, StoredModel
from tui.screens.base import ConsoleScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.import_model import ImportChoice, ImportModelScreen
from tui.screens.versions import VersionChoice, VersionsScreen

JOB_POLL_S = 0.25
RESIDENCY_POLL_S = 5.0
"""A slow re-read of idle times and expiries; loads and unloads arrive as events at once."""

COLUMNS = (
    "name", "ver", "status", "state", "GiB", "idle", "until",
    "aliases", "format", "quant", "size MB", "encrypted", "ctx",
)  # fmt: skip
"""Residency first after the name: at 80 columns the registry's details are what scrolls off."""


class ModelsScreen(ConsoleScreen):
    """The registry as a table; actions apply to the row under the cursor."""

    # Short words, so that every hint fits in 80 columns; the tooltips and the help say them in full.
    # Verify, remove and reload are the rare ones: their keys work and the help lists them, but the
    # footer has no room left for them beside load, unload and pin.
    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("i", "import", "Import", tooltip="Import a model file or folder"),
        Binding("e", "enable", "On", tooltip="Enable the model: served at once"),
        Binding("d", "disable", "Off", tooltip="Disable the model: no new requests"),
        Binding("l", "load", "Load", tooltip="Load the model into memory now"),
        Binding("u", "unload", "Unload", tooltip="Unload the model now (asks first)"),
        Binding("p", "pin", "Pin", tooltip="Pin the model (never unloaded), or unpin it"),
        Binding("v", "verify", "Verify", show=False, tooltip="Decrypt and hash the model end to end"),
        Binding("a", "versions", "Versions", tooltip="Activate another version, or roll back"),
        Binding("x", "remove", "Del", show=False, tooltip="Remove the model from the registry (asks first)"),
        Binding("r", "reload", "Reload", show=False),
    ]
    REFRESH_ON = ("model.",)

    def body(self) -> ComposeResult:
        """The registry table and a status line."""
        yield Static("Models", classes="title")
        table: DataTable[Text] = DataTable(id="models", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static(
            "Changes apply at once: enabled models start, disabled ones stop once idle.", classes="hint"
        )
        yield Static("", id="models-status", classes="hint", markup=False)  # names, the gateway's errors
        yield Static("", id="models-budget", classes="hint", markup=False)
        yield ProgressBar(id="import-progress", show_eta=False)
        # No total: an activation reports no progress, the moving bar only says it is still working.
        yield ProgressBar(id="activation-progress", total=None, show_eta=False, show_percentage=False)

    activating: str | None = None
    """The model whose activation is running, if one is: one at a time from this console."""
    resident: dict[str, ResidentModel]
    """The last residency read, by model name (empty when the gateway did not answer it)."""

    def on_mount(self) -> None:
        """Re-read the residency now and then, a fallback for lost events (Textual runs ConsoleScreen's
        on_mount after this one: it loads and follows the events)."""
        self.resident = {}
        if self.console.poll_s is not None:
            self.set_interval(RESIDENCY_POLL_S, self._poll_residency)

    def _poll_residency(self) -> None:
        if self.is_current:
            self.reload()

    def _selected(self) -> str | None:
        table: DataTable[Text] = self.query_one("#models", DataTable)
        if table.row_count == 0:
            return None
        return str(table.get_row_at(table.cursor_row)[0])

    def show(
        self,
        models: list[Model],
        stored: list[StoredModel] | None = None,
        residency: ResidencyReport | None = None,
    ) -> None:
        """Fill the table (size and encryption from the store, state, memory, idle time and expiry from the
        residency, when they answered), keeping the cursor."""
        table: DataTable[Text] = self.query_one("#models", DataTable)
        row = table.cursor_row
        table.clear()
        in_store = {s.name: s for s in stored or []}
        self.resident = {r.name: r for r in residency.data} if residency else {}
        for m in models:
            entry = in_store.get(m.name)
            size = entry.size_bytes if entry else m.size_bytes
            encrypted = ("yes" if entry.encrypted else "no") if entry else "?"
            table.add_row(
                *literal_row(
                    m.name,
                    m.version,
                    m.status,
                    *residency_cells(self.resident.get(m.name)),
                    ",".join(m.aliases) or "-",
                    m.format,
                    m.quantization,
                    f"{size / 1e6:.1f}",
                    encrypted,
                    m.context_length,
                ),
                key=m.name,
            )
        if models:
            table.move_cursor(row=min(row, len(models) - 1))

    async def fetch(self) -> None:
        """Fetch the registry."""
        models = await self.call(self.source.models(), "models")
        if models is None:
            return
        stored = await self.call(self.source.stored_models(), "store")
        residency = await self.call(self.source.residency(), "residency")
        self.show(models, stored, residency)
        if residency is not None:
            self.query_one("#models-budget", Static).update(budget_line(residency.budget))

    def action_reload(self) -> None:
        """Refresh from the gateway."""
        self.reload()

    @work(exclusive=True, group="models-change")
    async def _set_enabled(self, enabled: bool) -> None:
        name = self._selected()
        if name is None:
            return
        if not await self.act(self.source.set_model_enabled(name, enabled), "models"):
            return
        done = "enabled: its worker starts now" if enabled else "disabled: its worker stops once idle"
        self.notify(f"{name} {done}")
        self.reload()

    def action_enable(self) -> None:
        """Enable the selected model."""
        self._set_enabled(True)

    def action_disable(self) -> None:
        """Disable the selected model."""
        self._set_enabled(False)

    @work(group="models-load")  # not exclusive: loading one model must not cancel loading another
    async def action_load(self) -> None:
        """Load the selected model now; the answer comes once it is loaded (others may be evicted)."""
        name = self._selected()
        if name is None:
            return
        status = self.query_one("#models-status", Static)
        status.update(f"loading {name}...")
        done = await self.call(self.source.load_model(name), f"load {name}")
        if done is None:
            status.update(f"load {name}: refused (see the message)")
            return
        took = "already loaded" if done.load_ms == 0 else f"loaded in {done.load_ms / 1000:.1f} s"
        status.update(f"{done.name} {took}, {gib(done.memory_bytes)} GiB")
        self.notify(f"{done.name} {took}", title="load")
        self.reload()

    @work(exclusive=True, group="models-change")
    async def action_unload(self) -> None:
        """Ask, then unload the selected model (refused by the gateway while it has requests in flight)."""
        name = self._selected()
        if name is None:
            return
        if not await self.app.push_screen_wait(ConfirmScreen(unload_question(name))):
            return
        if await self.call(self.source.unload_model(name), f"unload {name}") is None:
            return
        self.notify(f"{name} unloaded", title="unload")
        self.reload()

    @work(exclusive=True, group="models-change")
    async def action_pin(self) -> None:
        """Pin the selected model (never unloaded while serving), or unpin it if it is pinned."""
        name = self._selected()
        if name is None:
            return
        current = self.resident.get(name)
        pin = current is None or not current.pinned
        done = await self.call(self.source.set_pinned(name, pin), f"{'pin' if pin else 'unpin'} {name}")
        if done is None:
            return
        said = "pinned: never unloaded while serving" if done.pinned else "unpinned: unloads when idle"
        self.notify(f"{done.name} {said}", title="pin")
        self.reload()

    @work(exclusive=True, group="models-change")
    async def action_remove(self) -> None:
        """Ask, then remove the selected model from the registry (its file stays)."""
        name = self._selected()
        if name is None:
            return
        if not await self.app.push_screen_wait(ConfirmScreen(f"Remove model {name!r} from the registry?")):
            return
        if not await self.act(self.source.remove_model(name), "remove model"):
            return
        self.notify(f"removed {name}")
        self.reload()

    @work(group="models-verify")  # not exclusive: a second verify must not cancel the first
    async def action_verify(self) -> None:
        """Decrypt the selected model end to end in the gateway; the screen stays live meanwhile."""
        name = self._selected()
        if name is None:
            return
        status = self.query_one("#models-status", Static)
        status.update(f"verifying {name}: decrypting and hashing every chunk...")
        self.notify(f"verifying {name}...", title="verify")
        result = await self.call(self.source.verify_model(name), f"verify {name}")
        if result is None:
            status.update(f"verify {name}: failed (see the message)")
            return
        status.update(f"{name} verified, sha256 {result.sha256[:16]}...")
        self.notify(f"{name} verified: every chunk and the SHA-256 match", title="verify")

    @work(group="models-versions")  # not exclusive: a new dialog must not cancel a running activation
    async def action_versions(self) -> None:
        """Show the selected model's versions; activate the one picked, or roll back, after asking."""
        name = self._selected()
        if name is None:
            return
        if self.activating is not None:
            self.notify(f"{self.activating} is being activated; wait for its result", severity="warning")
            return
        versions = await self.call(self.source.model_versions(name), f"versions of {name}")
        if versions is None:
            return
        choice = await self.app.push_screen_wait(VersionsScreen(name, versions))
        if choice is None or not await self.app.push_screen_wait(ConfirmScreen(_question(choice))):
            return
        await self._switch(choice)

    async def _switch(self, choice: VersionChoice) -> None:
        """Run the activation in the gateway; the bar moves and the screen stays live until the answer."""
        what = "roll back" if choice.is_rollback else f"activate version {choice.version}"
        status = self.query_one("#models-status", Static)
        bar = self.query_one("#activation-progress", ProgressBar)
        status.update(f"{choice.name}: {what}: loading it beside the serving version, running the checks...")
        self.activating = choice.name
        bar.display = True
        try:
            call = (
                self.source.roll_back(choice.name)
                if choice.version is None
                else self.source.activate_version(choice.name, choice.version)
            )
            done: Activated = await call
        except AdminApiError as error:
            # The gateway's reason is one line (which check failed, or that it did not load).
            status.update(f"{choice.name}: {what} refused: {error.message}")
            self.notify(error.message, title=f"{what} refused", severity="error")
            return
        except ConnectionLost:
            self.console.connected = False
            status.update(f"{choice.name}: {what}: connection lost; see the version column once it is back.")
            return
        finally:
            self.activating = None
            bar.display = False
        self.console.connected = True
        passed = ", ".join(c.check for c in done.checks if c.ok) or "-"
        switched = f"{done.name} now serves version {done.version} (was {done.replaced_version})"
        status.update(f"{switched}; checks passed: {passed}")
        self.notify(f"{done.name} now serves version {done.version}", title="versions")
        self.reload()

    @work(group="models-import")  # not exclusive: a second import must not cancel the first
    async def action_import(self) -> None:
        """Ask for a path and a name, start the import in the gateway and follow its job until it ends."""
        choice = await self.app.push_screen_wait(ImportModelScreen())
        if choice is None:
            return
        status = self.query_one("#models-status", Static)
        status.update(f"import {choice.name}: starting...")
        if choice.bundle:  # verified whole by the gateway; the bundle names its models
            call = self.source.import_bundle(choice.path)
        else:
            call = self.source.import_model(choice.path, choice.name, choice.encrypt)
        job = await self._import_step(call, choice)
        bar = self.query_one("#import-progress", ProgressBar)
        while job is not None and job.state == "running":
            bar.display = True
            bar.update(total=max(job.bytes_total, 1), progress=job.bytes_done)
            status.update(
                f"importing {choice.name}: {job.bytes_done / 1e6:.1f} of {job.bytes_total / 1e6:.1f} MB"
            )
            await asyncio.sleep(JOB_POLL_S)  # the screen stays live: this worker only waits
            job = await self._import_step(self.source.job(job.id), choice)
        bar.display = False
        if job is None:
            return
        if job.error is not None:
            status.update(f"import {choice.name} failed: {job.error.message}")
            self.notify(job.error.message, title="import", severity="error")
            return
        what, how = choice.name, "encrypted into the store" if choice.encrypt else "registered in place"
        if choice.bundle:
            names = [str(model["name"]) for model in (job.result or {}).get("models", [])]
            what, how = ", ".join(names) or choice.name, "from the signed bundle, encrypted into the store"
        status.update(f"{what} imported ({how}); the gateway serves it now (see Engines).")
        self.notify(f"{what} imported; served now", title="import")
        self.reload()

    async def _import_step(self, call: Awaitable[Job], choice: ImportChoice) -> Job | None:
        """One call of an import; a refusal becomes the one-line status, a lost connection the banner."""
        status = self.query_one("#models-status", Static)
        try:
            job = await call
        except AdminApiError as error:
            status.update(f"import {choice.name} refused: {error.message}")
            self.notify(error.message, title="import", severity="error")
            return None
        except ConnectionLost:
            self.console.connected = False
            status.update(f"import {choice.name}: connection lost; see the Models list once it is back.")
            return None
        self.console.connected = True
        return job


def _question(choice: VersionChoice) -> str:
    """What the confirmation asks before a switch."""
    if choice.version is None:
        return f"Roll {choice.name} back to the version that served before? It is checked before it serves."
    return f"Activate version {choice.version} of {choice.name}? It is checked before it serves."
