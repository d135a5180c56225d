"""The llama.cpp worker's compute threads give way to request handling (SCHED_IDLE) when asked."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from appliance.engines.llamacpp.core import Finished, SamplingParams
from appliance.engines.llamacpp.model import LoadedModel, WorkerConfig
from appliance.settings import ComputePriority


def _idle_threads() -> set[int]:
    """Native ids of this process's threads that run under SCHED_IDLE."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.sched_getscheduler(int(tid)) == os.SCHED_IDLE:
                found.add(int(tid))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return found


async def _generate_and_embed(model: LoadedModel) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    async for event in model.core.generate(model.tokenize("Hello"), params):
        if isinstance(event, Finished):
            break
    await model.embedder.embed(["Hello"])


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_compute_threads_run_under_the_chosen_policy(model_path: Path, priority: ComputePriority) -> None:
    """ "idle": the scheduler thread, the OpenMP thread it decodes with and the embedding thread run under
    SCHED_IDLE, the caller's thread does not; "normal" leaves every thread as it was."""
    before = _idle_threads()
    model = LoadedModel(
        WorkerConfig(model_path, "m", context_length=1024, threads=2, parallel=2, compute_priority=priority)
    )
    try:
        asyncio.run(_generate_and_embed(model))
        idle = _idle_threads() - before
        named = {thread.name: thread.native_id for thread in threading.enumerate()}
        embedding = next(tid for name, tid in named.items() if name.startswith("embeddings"))
        decoding = model.batching.scheduler_thread_id
        if priority == "idle":
            assert {decoding, embedding} <= idle
            assert len(idle) >= 3  # the OpenMP worker thread of the two-thread decode too
        else:
            assert idle == set()
        assert threading.get_native_id() not in idle
    finally:
        model.close()
