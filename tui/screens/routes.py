"""Fallback routes: each chain with its links' circuit states; reorder, add and remove links, then save."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from tui.chains import chain_text, link_state
from tui.literal import literal, literal_row
from tui.schemas import RouteInfo, Routes
from tui.screens.add_link import AddLinkScreen
from tui.screens.base import ConsoleScreen
from tui.screens.confirm import ConfirmScreen

ROUTE_COLUMNS = ("route", "chain")
LINK_COLUMNS = ("#", "link", "circuit")


def moved(links: tuple[str, ...], index: int, step: int) -> tuple[str, ...]:
    """`links` with the link at `index` swapped with its neighbour `step` (-1 up, +1 down) away."""
    target = index + step
    if not 0 <= index < len(links) or not 0 <= target < len(links):
        return links
    order = list(links)
    order[index], order[target] = order[target], order[index]
    return tuple(order)


def inserted(links: tuple[str, ...], index: int, link: str) -> tuple[str, ...]:
    """`links` with `link` placed right after position `index` (at the top when `index` is -1)."""
    at = max(0, min(index + 1, len(links)))
    return (*links[:at], link, *links[at:])


def removed(links: tuple[str, ...], index: int) -> tuple[str, ...]:
    """`links` without the link at `index`."""
    return links[:index] + links[index + 1 :] if 0 <= index < len(links) else links


class RoutesScreen(ConsoleScreen):
    """Routes on top, the selected route's links below; edits stay a draft until saved."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        # Short words (the links' title says they act on links), so that every hint fits in 80 columns.
        Binding("u", "move(-1)", "Up", tooltip="Move the link up"),
        Binding("d", "move(1)", "Down", tooltip="Move the link down"),
        Binding("a", "add_link", "Add", tooltip="Add a link below the selected one"),
        Binding("x", "remove_link", "Remove", tooltip="Remove the selected link"),
        Binding("s", "save", "Save", tooltip="Save the route (asks first)"),
        Binding("r", "reload", "Discard", tooltip="Discard unsaved edits and reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.known = Routes()
        # Edited but unsaved routes by name: a refresh from the gateway must not throw an admin's edit away.
        self.drafts: dict[str, RouteInfo] = {}
        self.links_of: str | None = None

    def body(self) -> ComposeResult:
        """The routes table, the links of the selected route and a status line."""
        yield Static("Routes", classes="title")
        routes: DataTable[Text] = DataTable(id="routes", cursor_type="row", zebra_stripes=True)
        routes.add_columns(*ROUTE_COLUMNS)
        yield routes
        yield Static("Links (u up, d down, a add, x remove, s save)", id="links-title", classes="title")
        links: DataTable[Text] = DataTable(id="links", cursor_type="row", zebra_stripes=True)
        links.add_columns(*LINK_COLUMNS)
        yield links
        yield Static("", id="routes-status", classes="hint", markup=False)  # names a route

    def selected(self) -> RouteInfo | None:
        """The route under the cursor, as edited so far."""
        table: DataTable[Text] = self.query_one("#routes", DataTable)
        if table.row_count == 0:
            return None
        name = str(table.get_row_at(table.cursor_row)[0]).rstrip(" *")
        return self.drafts.get(name) or next((r for r in self.known.data if r.name == name), None)

    def show(self, routes: Routes) -> None:
        """Fill the routes table, drafts marked with `*`, keeping the cursor where it was."""
        self.known = routes
        table: DataTable[Text] = self.query_one("#routes", DataTable)
        row = table.cursor_row
        table.clear()
        for known in routes.data:
            route = self.drafts.get(known.name, known)
            mark = " *" if known.name in self.drafts else ""
            table.add_row(literal(route.name + mark), chain_text(route, routes.breakers), key=route.name)
        if routes.data:
            table.move_cursor(row=min(row, len(routes.data) - 1))
        self.show_links()

    def show_links(self, cursor: int | None = None) -> None:
        """Fill the links table from the selected route; say whether it has unsaved changes."""
        links: DataTable[Text] = self.query_one("#links", DataTable)
        row = links.cursor_row if cursor is None else cursor
        links.clear()
        route = self.selected()
        self.links_of = route.name if route else None
        status = self.query_one("#routes-status", Static)
        if route is None:
            status.update(
                "No routes: add them under [routes.NAME] in settings.toml or with PUT /admin/routes."
            )
            return
        for number, link in enumerate(route.links, start=1):
            links.add_row(*literal_row(number, link, link_state(self.known.breakers, link)))
        if route.links:
            links.move_cursor(row=min(row, len(route.links) - 1))
        canned = "then the canned answer" if route.canned is not None else "no canned answer"
        unsaved = "  UNSAVED: s saves, r discards" if route.name in self.drafts else ""
        status.update(f"{route.name}: {len(route.links)} link(s), {canned}.{unsaved}")

    @on(DataTable.RowHighlighted, "#routes")
    def _route_highlighted(self, event: DataTable.RowHighlighted) -> None:
        # Refilling the table highlights its row again; only another route resets the links' cursor.
        if event.row_key.value != self.links_of:
            self.show_links(cursor=0)

    async def fetch(self) -> None:
        """Fetch the routes and their breakers."""
        routes = await self.call(self.source.routes(), "routes")
        if routes is not None:
            self.show(routes)

    def action_reload(self) -> None:
        """Throw away unsaved edits and show the gateway's routes again."""
        self.drafts.clear()
        self.reload()

    def _edit(self, route: RouteInfo, order: tuple[str, ...], cursor: int) -> None:
        """Keep `order` as the route's draft (none if it is what the gateway has) and show it."""
        known = next((r for r in self.known.data if r.name == route.name), None)
        if known is not None and known.links == order:
            self.drafts.pop(route.name, None)  # back to what the gateway has: nothing to save
        else:
            self.drafts[route.name] = RouteInfo(route.name, order, route.canned)
        self.show(self.known)
        self.show_links(cursor=max(0, cursor))

    def action_move(self, step: int) -> None:
        """Move the link under the links cursor up (-1) or down (+1) in the draft."""
        route = self.selected()
        links: DataTable[Text] = self.query_one("#links", DataTable)
        if route is None or links.row_count == 0:
            return
        index = links.cursor_row
        order = moved(route.links, index, step)
        if order != route.links:
            self._edit(route, order, index + step)

    def action_remove_link(self) -> None:
        """Take the link under the links cursor out of the draft (saving asks first)."""
        route = self.selected()
        links: DataTable[Text] = self.query_one("#links", DataTable)
        if route is None or links.row_count == 0:
            return
        index = links.cursor_row
        self._edit(route, removed(route.links, index), min(index, len(route.links) - 2))

    @work(exclusive=True, group="routes-add")
    async def action_add_link(self) -> None:
        """Pick a registered model that is not in the chain yet and put it below the selected link."""
        route = self.selected()
        if route is None:
            return
        models = await self.call(self.source.models(), "models")
        if models is None:
            return
        candidates = [m.name for m in models if m.name not in route.links]
        if not candidates:
            self.notify("every registered model is in this chain already", severity="warning")
            return
        picked = await self.app.push_screen_wait(AddLinkScreen(route.name, candidates))
        if picked is None:
            return
        links: DataTable[Text] = self.query_one("#links", DataTable)
        # An empty chain has no row under the cursor: the new link goes to the top.
        index = links.cursor_row if links.row_count else -1
        # Edit from a message, not from this worker: a table refilled in a worker can be drawn before it
        # measures its new rows, and DataTable then keeps the old column widths (a cut-off `*`).
        self.call_later(self._edit, route, inserted(route.links, index, picked), index + 1)

    @work(exclusive=True, group="routes-save")
    async def action_save(self) -> None:
        """Ask, then PUT the selected route's edited chain; the gateway uses it from the next request."""
        route = self.selected()
        if route is None or route.name not in self.drafts:
            self.notify("nothing to save: move, add or remove a link first", severity="warning")
            return
        chain = " → ".join([*route.links, *(["canned"] if route.canned is not None else [])])
        if not await self.app.push_screen_wait(ConfirmScreen(f"Save route {route.name!r} as {chain}?")):
            return
        saved = await self.call(self.source.put_route(route), "save route")
        if saved is None:
            return
        self.drafts.pop(route.name, None)
        self.notify(f"route {saved.name} saved: {' → '.join(saved.links) or 'canned only'}")
        self.reload()
