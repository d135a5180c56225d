"""End-to-end GPU check, for a machine with an NVIDIA GPU (CI machines have none, and vLLM cannot be installed
there): real NVML detection, GPU metrics, the plan, and, where vllm is installed and an AWQ model folder is
given, a real vLLM worker started by the supervisor exactly as `appliance serve` would, answering one request.

    .venv/bin/python scripts/gpu_check.py [--model /models/qwen2.5-7b-awq [--name qwen]]

Exit status 0 when every step that could run passed; 1 at the first failure (its reason printed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from api.metrics import GatewayMetrics
from appliance.engines.vllm.launch import installed_vllm_version, vllm_problem
from appliance.engines.vllm.model_folder import describe_awq_folder
from appliance.hardware import Hardware, detect_hardware, load_nvml
from appliance.planner import Plan, make_plan
from appliance.registry.models import ModelInfo
from appliance.settings import Settings
from appliance.supervisor import Supervisor


def fail(reason: str) -> None:
    """Print the failed step and exit 1."""
    print(f"FAIL: {reason}")
    sys.exit(1)


def check_detection() -> Hardware:
    """Real NVML: at least one GPU with its memory, capability, driver and CUDA version."""
    hardware = detect_hardware(load_nvml())
    print(f"CPU: {hardware.cpu.model}, {hardware.cpu.physical_cores} cores, AVX-512 {hardware.cpu.avx512}")
    if not hardware.gpus:
        fail(f"no GPU detected: {hardware.gpu_note}")
    for gpu in hardware.gpus:
        mig = f", MIG {[m.profile for m in gpu.mig_instances]}" if gpu.mig_enabled else ""
        print(
            f"GPU {gpu.index}: {gpu.name}, {gpu.memory_total_mib} MiB ({gpu.free_mib} free), "
            f"capability {gpu.compute_capability}{mig}"
        )
    print(f"driver {hardware.driver_version}, CUDA {hardware.cuda_version}")
    if not hardware.driver_version or not hardware.cuda_version:
        fail("NVML gave no driver or CUDA version")
    return hardware


def check_metrics() -> None:
    """The NVML collector reads every GPU at scrape time."""
    text = GatewayMetrics(load_nvml()).render().decode()
    lines = [line for line in text.splitlines() if line.startswith("appliance_gpu_")]
    print("\n".join(lines))
    if not any(line.startswith("appliance_gpu_power_watts{") for line in lines):
        fail("no GPU samples in /metrics")


async def serve_one_request(settings: Settings, plan: Plan, model: ModelInfo) -> None:
    """Start the planned vLLM worker through the supervisor and ask it one chat completion."""
    supervisor = Supervisor(settings, [model], plan)
    started = time.monotonic()
    try:
        await supervisor.start()
        worker = supervisor.workers[model.name]
        print(f"worker {worker.state.value} after {time.monotonic() - started:.0f} s")
        if worker.state.value != "ready":
            fail(f"the vLLM worker did not become ready ({worker.last_exit or 'timed out'})")
        body = {
            "model": model.name,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
        }
        answer = await worker.client.post("/v1/chat/completions", json=body)
        print(f"HTTP {answer.status_code}: {answer.text[:300]}")
        if answer.status_code != 200 or not answer.json()["choices"][0]["message"]["content"]:
            fail("the vLLM worker did not answer the request")
        metrics = await supervisor.worker_metrics()
        if not any("vllm:" in text for text in metrics):
            fail("the vLLM worker exported no metrics")
    finally:
        await supervisor.stop()


def main() -> None:
    """Run every step that this machine allows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an AWQ model folder (config.json + safetensors)")
    parser.add_argument("--name", default="gpu-check", help="the served model name")
    args = parser.parse_args()
    hardware = check_detection()
    check_metrics()
    if args.model is None:
        print("OK (detection and metrics; pass --model DIR to plan and serve an AWQ model)")
        return
    home = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    settings = Settings(home=home)
    spec = describe_awq_folder(args.model, args.name)
    version = installed_vllm_version()
    plan = make_plan(hardware, [spec], settings, vllm_problem=vllm_problem(version))
    (planned,) = plan.models
    print(
        f"plan: {planned.engine} on {planned.devices}, TP {planned.tensor_parallel_size}, fits {planned.fits}"
    )
    print(f"      {planned.reason}")
    if version is None:
        print("OK (detection, metrics and plan; vllm is not installed, so nothing was served)")
        return
    if not planned.fits:
        fail(f"the model does not fit this machine: {planned.reason}")
    model = ModelInfo(
        id=1, name=args.name, aliases=(), format="awq", architecture="", quantization="AWQ",
        path=args.model.resolve(), sha256="", size_bytes=spec.size_bytes, context_length=spec.context_length,
        has_chat_template=True, chat_template_override=None, status="enabled", created=0,
    )  # fmt: skip
    asyncio.run(serve_one_request(settings, plan, model))
    print(f"OK (served a request with vLLM {version})")


if __name__ == "__main__":
    main()
