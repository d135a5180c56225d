"""Workers as the supervisor starts them: what another process of the same user can take from them.

Issue 17, items 15 and 8. The attacker is `proc_observer`: a process of our uid without CAP_SYS_PTRACE,
which scans /proc all through a worker's start. A dumpable process lets it resolve and open the worker's
descriptors (`/proc/PID/fd/N`: a memfd of decrypted weights) and read its memory; a non-dumpable one
lets it do neither. vLLM is a stand-in for its server module (`fake_vllm/`), behind the real wrapper.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from appliance import egress
from appliance.engines.llamacpp.memlock import memory_lock_problem
from appliance.hardware import Hardware
from appliance.planner import ModelPlan, Plan
from appliance.registry.models import ModelInfo
from appliance.registry.registry import open_registry
from appliance.settings import Settings, WorkerSettings
from appliance.store.loading import sealed_model_source
from appliance.store.store import ModelStore
from appliance.supervisor import Supervisor, WorkerState

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"


WITHOUT_PTRACE = (sys.executable, "-m", "tests.security.without_ptrace")


@asynccontextmanager
async def _observed(marker: str) -> AsyncIterator[dict[str, object]]:
    """Run the observer on processes whose argv holds `marker`; its report fills the dict on exit."""
    observer = await asyncio.create_subprocess_exec(
        *WITHOUT_PTRACE, sys.executable, "-m", "tests.security.proc_observer", marker,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert observer.stdin is not None
    assert observer.stdout is not None
    assert await asyncio.wait_for(observer.stdout.readline(), 60) == b"ready\n"
    report: dict[str, object] = {}
    try:
        yield report
    finally:
        observer.stdin.close()
        report.update(json.loads(await asyncio.wait_for(observer.stdout.readline(), 60)))
        await observer.wait()


def _status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _llamacpp_facts(pid: int) -> tuple[int, str]:
    """The worker's locked memory (KiB) and what its `--model /proc/self/fd/N` is ('' if not ours to see)."""
    locked_kib = int(_status_field(pid, "VmLck").split()[0])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    descriptor = argv[argv.index(b"--model") + 1].decode().rsplit("/", 1)[1]
    try:
        return locked_kib, os.readlink(f"/proc/{pid}/fd/{descriptor}")
    except PermissionError:
        return locked_kib, ""


@asynccontextmanager
async def _encrypted_worker(home: Path, model_path: Path) -> AsyncIterator[Supervisor]:
    """A supervisor serving `model_path` imported into an encrypted store, as `appliance serve` would."""
    store = ModelStore(home, open_registry(home / "registry.db"))
    model = store.import_gguf(model_path, name="smol")
    settings = Settings(home=home, workers=WorkerSettings(threads=2))
    plan = ModelPlan(
        name="smol", engine="llamacpp", fits=True, reason="test",
        context_length=256, concurrency=1, kv_pool_tokens=256,
    )  # fmt: skip
    supervisor = Supervisor(
        settings, [model], Plan(Hardware(), (plan,)), model_source=sealed_model_source(store)
    )
    try:
        yield supervisor
    finally:
        await supervisor.stop()


async def test_llamacpp_worker_holds_the_plaintext_only_once_non_dumpable(
    appliance_home: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 15: an encrypted model's memfd is never in a descriptor table that a process of the same
    user can read: the observer watches the worker's whole start and finds none."""
    prefix = egress.network_namespace_prefix()
    if "--map-current-user" in prefix:
        pytest.skip(
            "unprivileged, the worker runs in a user namespace that our uid owns: the kernel then grants our "
            "processes ptrace over it whether it is dumpable or not (only root can show the flag decide)"
        )
    # The worker as the supervisor starts it, but without CAP_SYS_PTRACE (see without_ptrace.py).
    monkeypatch.setattr(egress, "network_namespace_prefix", lambda: (*prefix, *WITHOUT_PTRACE))
    async with _encrypted_worker(appliance_home, model_path) as supervisor:
        worker = supervisor.workers["smol"]
        async with _observed(str(worker.socket_path)) as seen:
            await supervisor.start()
            assert worker.state is WorkerState.READY
            pid = worker.pid
    assert seen["without_ptrace"] is True
    assert pid in seen["seen"]  # type: ignore[operator]  # it watched the worker from its first moments
    assert seen["memfds"] == []  # never one plaintext descriptor while the worker was dumpable
    assert pid not in seen["resolvable_at_last"]  # type: ignore[operator]  # non-dumpable once started


async def test_llamacpp_worker_locks_the_handed_model_in_memory(
    appliance_home: Path, model_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Item 15: the memfd arrives on the descriptor the worker's --model names; the weights are locked in
    RAM where the limits allow, and where they do not the worker says why, once."""
    async with _encrypted_worker(appliance_home, model_path) as supervisor:
        worker = supervisor.workers["smol"]
        await supervisor.start()
        assert worker.state is WorkerState.READY
        assert worker.pid is not None
        locked_kib, descriptor_target = _llamacpp_facts(worker.pid)
    if os.geteuid() == 0:  # root may resolve a non-dumpable process's descriptors
        assert descriptor_target.startswith("/memfd:model-smol")
    size = os.stat(model_path).st_size
    problem = memory_lock_problem(size)
    if problem:
        assert capfd.readouterr().err.count("cannot lock the decrypted weights of smol") == 1
    else:
        assert locked_kib * 1024 >= size * 0.9  # the weights are locked: never swapped out


async def test_vllm_worker_has_loopback_only_and_every_process_non_dumpable(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8: vLLM (a stand-in for its server module) runs in a network namespace of its own with only
    loopback, up, and TCP on it working; it and the interpreters it starts are non-dumpable."""
    report = tmp_path / "vllm.json"
    monkeypatch.setenv("FAKE_VLLM_REPORT", str(report))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_VLLM), os.environ.get("PYTHONPATH")]))
    )
    settings = Settings(home=appliance_home)
    model = ModelInfo(
        id=1, name="qwen", aliases=(), format="awq", architecture="qwen2", quantization="AWQ", path=tmp_path,
        sha256="0" * 64, size_bytes=1, context_length=256, has_chat_template=True,
        chat_template_override=None, status="enabled", created=0,
    )  # fmt: skip
    plan = ModelPlan(
        name="qwen", engine="vllm", fits=True, reason="test", quantization="awq", tensor_parallel_size=1,
        gpu_memory_utilization=0.9, context_length=256, concurrency=1, cuda_visible_devices="0",
    )  # fmt: skip
    supervisor = Supervisor(settings, [model], Plan(Hardware(), (plan,)))
    worker = supervisor.workers["qwen"]
    try:
        await supervisor.start()
        assert worker.state is WorkerState.READY
        pid = worker.pid
    finally:
        await supervisor.stop()
    inside = json.loads(report.read_text())
    assert inside["pid"] == pid  # the wrapper exec'd vLLM: the supervisor's pid is vLLM's
    assert inside["network_namespace"] != os.readlink("/proc/self/ns/net")
    assert inside["interfaces"] == ["lo"]
    assert inside["loopback_tcp"] is True
    assert inside["environment"] == {
        "VLLM_HOST_IP": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
    }
    assert (inside["dumpable"], inside["child_dumpable"]) == (0, 0)  # PR_GET_DUMPABLE: the kernel's word
