"""The vLLM worker as the supervisor starts it: exact argv and environment per plan, and readiness."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest

from appliance.engines.kind import Launch
from appliance.engines.llamacpp_launch import llamacpp_command
from appliance.engines.vllm.launch import (
    BOOT_FOLDER,
    LOOPBACK_ONLY,
    vllm_argv,
    vllm_environment,
    vllm_is_ready,
    vllm_problem,
)
from appliance.engines.vllm.model_folder import describe_awq_folder
from appliance.errors import ModelFileError
from appliance.hardware import Hardware, physical_cores
from appliance.planner import ModelPlan, make_plan
from appliance.registry.models import ModelInfo
from appliance.settings import GpuSettings, Settings, WorkerSettings
from appliance.supervisor import ENGINE_KINDS, Supervisor
from tests.appliance.model_specs import awq_7b, awq_70b, gguf_7b, machine

SOCKET = Path("/var/lib/appliance/run/m.sock")
BASE_ENVIRONMENT = {
    "PATH": "/usr/bin",
    "HOME": "/root",
    "HTTPS_PROXY": "http://proxy:3128",
    "LANG": "C.UTF-8",
}
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def model_info(name: str, path: str, fmt: str = "awq", context_length: int = 32768) -> ModelInfo:
    """A registry entry as the supervisor receives it."""
    return ModelInfo(
        id=1, name=name, aliases=(), format=fmt, architecture="llama", quantization="AWQ", path=Path(path),
        sha256="0" * 64, size_bytes=1, context_length=context_length, has_chat_template=True,
        chat_template_override=None, status="enabled", created=0,
    )  # fmt: skip


def launch_for(plan: ModelPlan, settings: Settings) -> Launch:
    """The launch the supervisor would build for a planned model."""
    return Launch(model_info(plan.name, plan.path), plan, SOCKET, settings)


def test_argv_for_one_h100() -> None:
    """One GPU, Marlin kernel, the settings' share and the context cap, on the worker's unix socket."""
    settings = Settings(home=Path("/var/lib/appliance"))
    (plan,) = make_plan(machine("h100_80gb"), [awq_70b()], settings).models
    assert vllm_argv(launch_for(plan, settings), "0.11.0") == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/llama-3.1-70b-awq",
        "--served-model-name", "llama-3.1-70b",
        "--quantization", "awq_marlin",
        "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.90",
        "--max-model-len", "4096",
        "--max-num-seqs", "16",
        "--uds", "/var/lib/appliance/run/m.sock",
        "--disable-uvicorn-access-log",
        "--enable-prefix-caching",
    ]  # fmt: skip
    assert vllm_environment(launch_for(plan, settings), BASE_ENVIRONMENT) == {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", **OFFLINE, "CUDA_VISIBLE_DEVICES": "0",
        **LOOPBACK_ONLY, "PYTHONPATH": str(BOOT_FOLDER),
    }  # fmt: skip


def test_argv_for_two_a100s_on_an_older_vllm() -> None:
    """Tensor-parallel 2 over GPUs 0 and 1; vLLM before 0.10.2 needs request logging turned off."""
    settings = Settings(
        home=Path("/var/lib/appliance"),
        workers=WorkerSettings(context_length=8192),
        gpu=GpuSettings(memory_utilization=0.85, max_num_seqs=8, enable_prefix_caching=False),
    )
    (plan,) = make_plan(machine("a100_40gb_x2"), [awq_70b()], settings).models
    assert vllm_argv(launch_for(plan, settings), "0.9.2") == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/llama-3.1-70b-awq",
        "--served-model-name", "llama-3.1-70b",
        "--quantization", "awq_marlin",
        "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.85",
        "--max-model-len", "8192",
        "--max-num-seqs", "8",
        "--uds", "/var/lib/appliance/run/m.sock",
        "--disable-uvicorn-access-log",
        "--disable-log-requests",
    ]  # fmt: skip
    assert vllm_environment(launch_for(plan, settings), {})["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_argv_for_a_t4_and_a_mig_instance() -> None:
    """The T4 (7.5) gets the plain AWQ kernel; a MIG instance is selected by its UUID."""
    settings = Settings(home=Path("/var/lib/appliance"))
    (t4,) = make_plan(machine("t4"), [awq_7b()], settings).models
    argv = vllm_argv(launch_for(t4, settings), "0.11.0")
    assert argv[argv.index("--quantization") + 1] == "awq"
    assert argv[argv.index("--served-model-name") + 1] == "qwen2.5-7b"
    (mig,) = make_plan(machine("h100_mig"), [awq_7b()], settings).models
    environment = vllm_environment(launch_for(mig, settings), BASE_ENVIRONMENT)
    assert environment == {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", **OFFLINE,
        "CUDA_VISIBLE_DEVICES": "MIG-7a6b5c4d-3e2f-5a1b-8c9d-0e1f2a3b4c5d",
        **LOOPBACK_ONLY, "PYTHONPATH": str(BOOT_FOLDER),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        (None, "vLLM is not installed"),
        ("0.6.3.post1", "vLLM 0.6.3.post1 cannot serve on a unix socket (needs 0.9.0 or newer)"),
        ("0.9.0", ""),
        ("0.11.0+cu128", ""),
    ],
)
def test_vllm_availability(version: str | None, problem: str) -> None:
    """Absent or too old for --uds is a reason the planner records; new enough is none."""
    assert vllm_problem(version).startswith(problem)
    assert bool(vllm_problem(version)) == bool(problem)


def _vllm_server(models: list[str], health: int = 200) -> httpx.AsyncClient:
    """A client whose transport answers as vLLM's server does on /health and /v1/models."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(health)
        listed = {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}
        return httpx.Response(200, content=msgspec.json.encode(listed))

    return httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://worker")


async def test_ready_only_once_the_served_model_is_listed() -> None:
    """/health alone is not enough: the engine is ready when /v1/models lists the served name."""
    settings = Settings(home=Path("/var/lib/appliance"))
    (plan,) = make_plan(machine("h100_80gb"), [awq_7b()], settings).models
    launch = launch_for(plan, settings)
    async with _vllm_server(["qwen2.5-7b"]) as client:
        assert await vllm_is_ready(client, launch)
    async with _vllm_server([]) as client:
        assert not await vllm_is_ready(client, launch)
    async with _vllm_server(["qwen2.5-7b"], health=503) as client:
        assert not await vllm_is_ready(client, launch)


def test_llamacpp_worker_command_is_unchanged(tmp_path: Path) -> None:
    """The llama.cpp kind's exact argv: the plan's per-request context, slots and the pool they share."""
    settings = Settings(home=tmp_path, workers=WorkerSettings(parallel=3, queue_depth=9))
    model = model_info("small", "/models/small.gguf", fmt="gguf", context_length=2048)
    (plan,) = make_plan(Hardware(), [msgspec.structs.replace(gguf_7b(), name="small")], settings).models
    assert llamacpp_command(Launch(model, plan, tmp_path / "run" / "small.sock", settings)) == [
        sys.executable, "-m", "appliance.engines.llamacpp",
        "--model", "/models/small.gguf", "--name", "small",
        "--socket", str(tmp_path / "run" / "small.sock"),
        "--context-length", "32768", "--threads", str(physical_cores()),
        "--parallel", "3", "--kv-pool-tokens", str(3 * 32768), "--queue-depth", "9", "--stream-interval", "0",
        "--compute-priority", "idle",
        "--schema-limits", msgspec.json.encode(settings.limits.schema).decode(),
    ]  # fmt: skip


async def test_supervisor_starts_only_what_the_plan_fits(tmp_path: Path) -> None:
    """A model that fits nowhere gets no worker and keeps the planner's reason; the others get their kind."""
    settings = Settings(home=tmp_path)
    fits = model_info("qwen2.5-7b", "/models/qwen2.5-7b-awq")
    too_big = model_info("llama-3.1-70b", "/models/llama-3.1-70b-awq")
    plan = make_plan(machine("h100_mig"), [awq_7b(), awq_70b()], settings)
    supervisor = Supervisor(settings, [fits, too_big], plan)
    try:
        assert list(supervisor.workers) == ["qwen2.5-7b"]
        assert supervisor.workers["qwen2.5-7b"].kind is ENGINE_KINDS["vllm"]
        assert supervisor.not_started["llama-3.1-70b"].startswith("fits nowhere")
    finally:
        await supervisor.stop()
    assert set(ENGINE_KINDS) == {"llamacpp", "vllm"}


def test_awq_folder_is_described_from_its_config(tmp_path: Path) -> None:
    """Qwen2.5-7B-Instruct-AWQ's config.json gives the exact KV shape; the safetensors give the size."""
    config = {
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_attention_heads": 28,
        "num_hidden_layers": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
    }  # fmt: skip
    (tmp_path / "config.json").write_bytes(msgspec.json.encode(config))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 3000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 1000)
    spec = describe_awq_folder(tmp_path, "qwen")
    assert (spec.format, spec.size_bytes, spec.context_length) == ("awq", 4000, 32768)
    assert (spec.layers, spec.kv_heads, spec.head_dim) == (28, 4, 128)
    assert spec.kv_bytes_per_token() == awq_7b().kv_bytes_per_token()


def test_folder_that_is_not_awq_is_refused(tmp_path: Path) -> None:
    """A full-precision folder is not something the AWQ path serves; the error names the folder."""
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 2}')
    with pytest.raises(ModelFileError, match="does not describe an AWQ model"):
        describe_awq_folder(tmp_path, "plain")


def test_worker_command_wraps_vllm_in_the_parent_death_guard() -> None:
    """The supervisor runs vLLM's exact argv behind `python -m appliance.engines.vllm`."""
    settings = Settings(home=Path("/var/lib/appliance"))
    (plan,) = make_plan(machine("h100_80gb"), [awq_7b()], settings).models
    command = ENGINE_KINDS["vllm"].command(launch_for(plan, settings))
    assert command[:3] == [sys.executable, "-m", "appliance.engines.vllm"]
    assert command[3:6] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]


def test_guard_sets_the_parent_death_signal_and_execs() -> None:
    """The exec'd program inherits PR_SET_PDEATHSIG = SIGKILL (read back with PR_GET_PDEATHSIG)."""
    probe = (
        "import ctypes; libc = ctypes.CDLL(None); value = ctypes.c_int(); "
        "libc.prctl(2, ctypes.byref(value)); print(value.value)"
    )
    done = subprocess.run(
        [sys.executable, "-m", "appliance.engines.vllm", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(int(signal.SIGKILL))
