"""The vLLM loading path: an AWQ folder decrypted into private tmpfs that lives only until vLLM loads.

vLLM reads a model folder by path, so it cannot take a memfd. The plaintext goes to a folder of mode 0700
on a memory-backed file system (the run dir if it is tmpfs, else /dev/shm; a disk-backed one is refused),
and is removed as soon as the worker answers ready, or when the worker process is gone, or when its start-up
time is up, whichever comes first. The worker inherits the write end of a pipe and never writes to it: the
read end reaches end-of-file exactly when every process holding it (the worker) has exited, however it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import httpx

from appliance.engines.kind import Launch
from appliance.engines.vllm.launch import VLLM
from appliance.errors import ApplianceError

MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a 0700 folder of unpredictable name there
READY_POLL_S = 0.2


class NoPrivateMemoryFolderError(ApplianceError):
    """Neither the run dir nor /dev/shm is memory-backed: decrypted weights would land on a disk."""

    code = "no_tmpfs"


def _unescape(field: str) -> str:
    """/proc/mounts writes a space, tab, newline or backslash in a path as an octal escape."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


def file_system_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str:
    """The type of the file system `path` is on: the longest mount point above it wins (the last one
    mounted, if several share it)."""
    resolved, best, kind = path.resolve(), -1, ""
    for line in mounts.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape(fields[1]))
        if (resolved == point or point in resolved.parents) and len(point.parts) >= best:
            best, kind = len(point.parts), fields[2]
    return kind


def private_memory_parent(run_dir: Path, fallback: Path = SHARED_MEMORY) -> Path:
    """Where a plaintext model folder may go: `run_dir` if memory-backed, else `fallback`; else refuse."""
    for candidate in (run_dir, fallback):
        if candidate.is_dir() and file_system_type(candidate) in MEMORY_FILE_SYSTEMS:
            return candidate
    raise NoPrivateMemoryFolderError(
        f"neither {run_dir} nor {fallback} is a tmpfs: refusing to decrypt model weights onto a disk"
    )


def folder_prefix(model_name: str) -> str:
    """The name start of a plaintext folder: it carries the gateway's pid, so a later start can tell the
    folders a killed gateway left behind (SIGKILL runs no clean-up) from those of a live one."""
    return f"model-{os.getpid()}-{model_name}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_folders(run_dir: Path, shared: Path = SHARED_MEMORY) -> list[Path]:
    """Remove plaintext folders of ours whose gateway is gone; returns what was removed."""
    removed = []
    for parent in (run_dir, shared):
        for folder in parent.glob("model-*") if parent.is_dir() else ():
            pid = folder.name.split("-")[1]
            try:
                owner = folder.stat().st_uid
            except OSError:
                continue
            if pid.isdigit() and owner == os.getuid() and folder.is_dir() and not _alive(int(pid)):
                remove_folder(folder)
                removed.append(folder)
    return removed


def remove_folder(folder: Path) -> None:
    """Remove a plaintext folder (nothing if it is gone already)."""
    shutil.rmtree(folder, ignore_errors=True)


async def remove_when_loaded(folder: Path, worker_gone_fd: int, launch: Launch) -> None:
    """Wait until the vLLM worker is ready, has exited, or has run out of start-up time; remove `folder`."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def worker_exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(worker_gone_fd, worker_exited)
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(launch.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            deadline = loop.time() + launch.settings.workers.startup_timeout_s
            while not gone.done() and loop.time() < deadline:
                if launch.socket_path.exists():
                    with contextlib.suppress(httpx.HTTPError):
                        if await VLLM.is_ready(client, launch):
                            return
                await asyncio.wait({gone}, timeout=READY_POLL_S)
    finally:
        loop.remove_reader(worker_gone_fd)
        os.close(worker_gone_fd)
        remove_folder(folder)  # synchronous: it must happen even while the gateway is being cancelled
