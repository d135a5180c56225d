"""How the supervisor hands a worker its model: the plain path, or a sealed memfd for an encrypted model.

The worker then loads `/proc/self/fd/N`: llama.cpp opens, seeks and maps that path like any file, and the
plaintext never touches a disk-backed file. The memfd reaches the worker over a unix socket, not by
inheritance, so that the worker holds it only once it is non-dumpable (handoff.py). An encrypted AWQ folder
(vLLM) goes to a private tmpfs folder instead, removed once vLLM has loaded it (tmpfs.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from appliance.engines.kind import Launch
from appliance.store.handoff import queue_descriptor
from appliance.store.store import AWQ, ModelStore
from appliance.store.tmpfs import private_memory_parent, remove_folder, remove_when_loaded

ModelSource = Callable[[Launch], AbstractAsyncContextManager[tuple[Launch, tuple[int, ...]]]]
"""Gives the launch to start (its model path possibly replaced) and the descriptors the worker inherits."""


@asynccontextmanager
async def plain_model(launch: Launch) -> AsyncIterator[tuple[Launch, tuple[int, ...]]]:
    """The model file as registered, no descriptors."""
    yield launch, ()


def _close_memfd(done: asyncio.Future[int]) -> None:
    if not done.cancelled() and done.exception() is None:
        os.close(done.result())


def _remove_folder(done: asyncio.Future[Path]) -> None:
    if not done.cancelled() and done.exception() is None:
        remove_folder(done.result())


@asynccontextmanager
async def _tmpfs_folder(
    store: ModelStore, launch: Launch, cleaners: set[asyncio.Task[None]]
) -> AsyncIterator[tuple[Launch, tuple[int, ...]]]:
    """Decrypt an AWQ folder into private tmpfs for one vLLM start; a task removes it once vLLM has it."""
    parent = private_memory_parent(launch.settings.run_dir)
    decrypting = asyncio.ensure_future(asyncio.to_thread(store.decrypt_to_folder, launch.model, parent))
    try:
        folder = await asyncio.shield(decrypting)
    except asyncio.CancelledError:
        decrypting.add_done_callback(_remove_folder)  # the thread finishes; its plaintext must not stay
        raise
    worker_gone, worker_end = os.pipe()  # the worker inherits worker_end: EOF on worker_gone = it exited
    try:
        model = dataclasses.replace(launch.model, path=folder)
        yield dataclasses.replace(launch, model=model), (worker_end,)
    except BaseException:
        os.close(worker_gone)
        remove_folder(folder)  # the worker never started
        raise
    finally:
        os.close(worker_end)
    cleaner = asyncio.create_task(remove_when_loaded(folder, worker_gone, launch))
    cleaners.add(cleaner)
    cleaner.add_done_callback(cleaners.discard)


def sealed_model_source(store: ModelStore) -> ModelSource:
    """A source that decrypts encrypted models (into a sealed memfd; AWQ: tmpfs) and passes plain ones on."""
    cleaners: set[asyncio.Task[None]] = set()
    """The tasks that remove tmpfs folders, held so that none is garbage-collected while it waits."""

    @asynccontextmanager
    async def source(launch: Launch) -> AsyncIterator[tuple[Launch, tuple[int, ...]]]:
        if not store.is_encrypted(launch.model):
            yield launch, ()
            return
        if launch.model.format == AWQ:
            async with _tmpfs_folder(store, launch, cleaners) as opened:
                yield opened
            return
        # Decrypting hundreds of MB takes a while: keep the event loop (and the API) responsive meanwhile.
        decrypting = asyncio.ensure_future(asyncio.to_thread(store.decrypt_to_memfd, launch.model))
        try:
            fd = await asyncio.shield(decrypting)
        except asyncio.CancelledError:
            # A worker stopped mid-decryption (the store was locked): the thread still finishes, and the
            # memfd of plaintext it returns must not outlive it in the gateway.
            decrypting.add_done_callback(_close_memfd)
            raise
        try:
            carrier = queue_descriptor(fd)  # the worker takes the memfd once it is non-dumpable (handoff.py)
        finally:
            os.close(fd)  # the queued message holds the memfd now
        try:
            # The path names the socket until the worker has received the memfd onto the same number.
            model = dataclasses.replace(launch.model, path=Path(f"/proc/self/fd/{carrier}"))
            yield dataclasses.replace(launch, model=model), (carrier,)
        finally:
            # The worker holds its own copy of the socket; the memfd then lives as long as the worker. A
            # worker that never started takes it with this last reference to the socket.
            os.close(carrier)

    return source
