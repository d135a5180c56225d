"""How the supervisor hands a worker its model: the plain path, or a sealed memfd for an encrypted model.

The worker then loads `/proc/self/fd/N`: llama.cpp opens, seeks and maps that path like any file, and the
plaintext never touches a disk-backed file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from appliance.engines.kind import Launch
from appliance.store.store import ModelStore

ModelSource = Callable[[Launch], AbstractAsyncContextManager[tuple[Launch, tuple[int, ...]]]]
"""Gives the launch to start (its model path possibly replaced) and the descriptors the worker inherits."""


@asynccontextmanager
async def plain_model(launch: Launch) -> AsyncIterator[tuple[Launch, tuple[int, ...]]]:
    """The model file as registered, no descriptors."""
    yield launch, ()


def _close_memfd(done: asyncio.Future[int]) -> None:
    if not done.cancelled() and done.exception() is None:
        os.close(done.result())


def sealed_model_source(store: ModelStore) -> ModelSource:
    """A source that decrypts encrypted models into a sealed memfd and passes plain ones through."""

    @asynccontextmanager
    async def source(launch: Launch) -> AsyncIterator[tuple[Launch, tuple[int, ...]]]:
        if not store.is_encrypted(launch.model):
            yield launch, ()
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
            model = dataclasses.replace(launch.model, path=Path(f"/proc/self/fd/{fd}"))
            yield dataclasses.replace(launch, model=model), (fd,)
        finally:
            # The worker holds its own copy of the descriptor; the memfd lives as long as the worker.
            os.close(fd)

    return source
