"""The overview: hardware, engines, live rates, requests in flight and the latest errors."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import DataTable, Sparkline, Static

from appliance.wire.residency import budget_short
from tui.chains import chain_content
from tui.literal import literal_row
from tui.schemas import Gpu, GpuUsage, Hardware, Overview
from tui.screens.base import ConsoleScreen

ENGINE_COLUMNS = ("model", "ver", "state", "pid", "restarts", "slots", "KV pool", "last exit")


GIB = 1024**3


def pool_text(tokens: int, size: int) -> str:
    """A KV pool in thousands of tokens and GiB, `-` where the engine sizes its own (vLLM)."""
    return f"{tokens / 1024:.0f}k {size / GIB:.1f}G" if tokens else "-"


def gpu_line(gpu: Gpu, usage: GpuUsage | None) -> str:
    """One GPU: name, then memory used of total and utilisation from this poll when NVML answered."""
    if usage is None or usage.memory_total_bytes <= 0:
        free = f", {gpu.memory_free_mib / 1024:.1f} free" if gpu.memory_free_mib is not None else ""
        return f"GPU{gpu.index} {gpu.name}, {gpu.memory_total_mib / 1024:.1f} GiB{free}"
    used, total = usage.memory_used_bytes / GIB, usage.memory_total_bytes / GIB
    return f"GPU{gpu.index} {gpu.name}  mem {used:.1f}/{total:.1f} GiB  util {usage.utilization_ratio:.0%}"


def hardware_text(hardware: Hardware, usage: tuple[GpuUsage, ...] = ()) -> str:
    """CPU, RAM and each GPU on one line each; with no GPU, the reason the gateway gives."""
    cpu = hardware.cpu
    ram = f"{cpu.ram_total_mib / 1024:.1f} GiB RAM"
    if cpu.ram_available_mib is not None:
        ram += f" ({cpu.ram_available_mib / 1024:.1f} free)"
    lines = [f"CPU  {cpu.model}, {cpu.physical_cores} cores, {ram}"]
    by_index = {u.index: u for u in usage}
    lines.extend(gpu_line(gpu, by_index.get(gpu.index)) for gpu in hardware.gpus)
    if not hardware.gpus:
        lines.append(f"GPU  none ({hardware.gpu_note})" if hardware.gpu_note else "GPU  none")
    return "\n".join(lines)


class OverviewScreen(ConsoleScreen):
    """What the appliance is doing now; refreshed by the app's poll."""

    def body(self) -> ComposeResult:
        """Hardware, three sparklines, engines table, errors."""
        with VerticalScroll(id="overview"):
            # markup=False wherever the gateway's text goes: names and errors are shown as they are.
            yield Static("loading...", id="hardware", classes="panel", markup=False)
            with Horizontal(id="rates"):
                for name, title in (("rps", "requests/s"), ("tps", "output tok/s"), ("ttft", "TTFT p50 ms")):
                    with Vertical(classes="rate"):
                        yield Static(title, id=f"{name}-label", classes="rate-label")
                        yield Sparkline([], id=f"{name}-spark")
            yield Static("", id="queue")
            engines: DataTable[Text] = DataTable(id="engines", cursor_type="row", zebra_stripes=True)
            engines.add_columns(*ENGINE_COLUMNS)
            yield engines
            yield Static("", id="chains", classes="panel")
            yield Static("", id="errors", classes="panel", markup=False)

    def on_mount(self) -> None:
        """Show each poll the app makes."""
        super().on_mount()
        self.watch(self.app, "latest", self.show)

    def show(self, overview: Overview | None) -> None:
        """Render one poll and the rates the history holds."""
        if overview is None:
            return
        self.query_one("#hardware", Static).update(hardware_text(overview.hardware, overview.gpu_usage))
        history = self.console.history
        series = (
            ("rps", history.requests_per_s, "{:.2f}"),
            ("tps", history.tokens_per_s, "{:.1f}"),
            ("ttft", history.ttft_p50_ms, "{:.0f}"),
        )
        titles = {"rps": "requests/s", "tps": "output tok/s", "ttft": "TTFT p50 ms"}
        for name, points, fmt in series:
            now = fmt.format(points[-1]) if points else "-"
            self.query_one(f"#{name}-label", Static).update(f"{titles[name]}  {now}")
            self.query_one(f"#{name}-spark", Sparkline).data = list(points)
        ready = sum(1 for e in overview.engines if e.state == "ready")
        budget = f"   {budget_short(overview.residency)}" if overview.residency is not None else ""
        self.query_one("#queue", Static).update(
            f"in flight: {overview.in_flight:.0f}   engines ready: {ready}/{len(overview.engines)}{budget}"
        )
        table: DataTable[Text] = self.query_one("#engines", DataTable)
        table.clear()
        for e in overview.engines:
            table.add_row(*literal_row(
                e.model, e.version, e.state, e.pid or "-", e.restarts, e.slots or "-",
                pool_text(e.kv_pool_tokens, e.kv_cache_bytes), e.last_exit or "-",
            ))  # fmt: skip
        for model, reason in overview.not_started.items():
            table.add_row(*literal_row(model, "-", "not started", "-", "-", "-", "-", reason))
        chains = [
            Content.assemble(f"{r.name}: ", chain_content(r, overview.breakers)) for r in overview.routes
        ]
        shown = Content("\n").join(chains) if chains else Content("(none)")
        self.query_one("#chains", Static).update(Content.assemble("Routes\n", shown))
        errors = [f"{e.time[:19]}  {e.action}  {e.target}  {e.detail}" for e in overview.errors]
        self.query_one("#errors", Static).update(
            "Latest errors\n" + ("\n".join(errors) if errors else "(none)")
        )
