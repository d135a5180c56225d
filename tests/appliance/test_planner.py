"""The planner on described machines (tests/fixtures/hardware/*.json): engine, tensor parallelism and fit."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from appliance.hardware import Gpu, Hardware
from appliance.planner import GIB, ModelSpec, Plan, estimate_parameters, make_plan, plan_beside
from appliance.settings import GpuSettings, Settings, WorkerSettings
from tests.appliance.model_specs import awq_7b, awq_70b, gguf_7b, machine

SETTINGS = Settings(home=Path("/unused"))


def plan_one(hardware: Hardware, *variants: ModelSpec, settings: Settings = SETTINGS) -> Plan:
    """Plan the variants of one model."""
    return make_plan(hardware, list(variants), settings)


@pytest.mark.parametrize(
    ("fixture", "engine", "tensor_parallel", "quantization", "fits"),
    [
        ("h100_80gb", "vllm", 1, "awq_marlin", True),
        ("a100_40gb_x2", "vllm", 2, "awq_marlin", True),
        ("l40s_48gb", "none", 0, "", False),
        ("h100_mig", "none", 0, "", False),
        ("t4", "none", 0, "", False),
        ("v100", "none", 0, "", False),
        ("cpu_only", "none", 0, "", False),
    ],
)
def test_70b_awq_on_each_machine(
    fixture: str, engine: str, tensor_parallel: int, quantization: str, fits: bool
) -> None:
    """A 70B AWQ model (~60 GiB with its cache) fits an 80 GB GPU, or two 40 GB ones, and nothing smaller."""
    (model,) = plan_one(machine(fixture), awq_70b()).models
    assert (model.engine, model.tensor_parallel_size, model.quantization, model.fits) == (
        engine,
        tensor_parallel,
        quantization,
        fits,
    )
    if not fits:
        assert model.reason.startswith("fits nowhere")


def test_70b_awq_does_not_fit_one_40gb_gpu() -> None:
    """One A100 40GB cannot hold 37 GiB of weights plus cache and overhead; the reason gives the numbers."""
    one_a100 = msgspec.structs.replace(machine("a100_40gb_x2"), gpus=machine("a100_40gb_x2").gpus[:1])
    (model,) = plan_one(one_a100, awq_70b()).models
    assert not model.fits
    assert "needs" in model.reason
    assert "the most a free GPU offers is 36.0 GiB" in model.reason


def test_70b_memory_budget_is_weights_plus_kv_cache_plus_overhead() -> None:
    """KV cache = 2 x 80 layers x 8 heads x 128 x 2 bytes x 4096 context x 16 sequences = 20 GiB."""
    (model,) = plan_one(machine("h100_80gb"), awq_70b()).models
    assert model.kv_cache_bytes == 2 * 80 * 8 * 128 * 2 * 4096 * 16 == 20 * GIB
    assert model.weights_bytes == 39_800_000_000
    assert (model.context_length, model.concurrency, model.gpu_memory_utilization) == (4096, 16, 0.9)
    assert model.needed_bytes <= model.available_bytes
    assert model.cuda_visible_devices == "0"
    assert model.devices == ("GPU 0 (NVIDIA H100 80GB HBM3)",)


def test_tensor_parallel_spans_both_a100s() -> None:
    """Split over two GPUs, the worker sees both."""
    (model,) = plan_one(machine("a100_40gb_x2"), awq_70b()).models
    assert model.cuda_visible_devices == "0,1"
    assert "tensor-parallel over 2 GPUs" in model.reason


@pytest.mark.parametrize(
    ("fixture", "engine", "quantization", "where"),
    [
        ("h100_80gb", "vllm", "awq_marlin", ("GPU 0 (NVIDIA H100 80GB HBM3)",)),
        ("a100_40gb_x2", "vllm", "awq_marlin", ("GPU 0 (NVIDIA A100-SXM4-40GB)",)),
        ("l40s_48gb", "vllm", "awq_marlin", ("GPU 0 (NVIDIA L40S)",)),
        ("h100_mig", "vllm", "awq_marlin", ("GPU 0 MIG 2g.20gb",)),
        ("t4", "vllm", "awq", ("GPU 0 (Tesla T4)",)),
        ("v100", "llamacpp", "Q4_K_M", ("CPU",)),
        ("cpu_only", "llamacpp", "Q4_K_M", ("CPU",)),
    ],
)
def test_7b_with_awq_and_gguf_variants(
    fixture: str, engine: str, quantization: str, where: tuple[str, ...]
) -> None:
    """The AWQ variant on any GPU of compute capability >= 7.5 (Marlin from 8.0), else the GGUF on the CPU."""
    (model,) = plan_one(machine(fixture), awq_7b(), gguf_7b()).models
    assert model.fits
    assert (model.engine, model.quantization, model.devices) == (engine, quantization, where)
    assert model.tensor_parallel_size == (1 if engine == "vllm" else 0)


def test_7b_gguf_falls_back_to_the_cpu_on_the_v100_box_and_says_why() -> None:
    """The V100's compute capability 7.0 is below vLLM's AWQ floor; llama.cpp gets one thread per core and
    four slots per thread, at most 16."""
    (model,) = plan_one(machine("v100"), awq_7b(), gguf_7b()).models
    assert (model.engine, model.format, model.threads, model.concurrency) == ("llamacpp", "gguf", 20, 16)
    assert model.path == "/models/qwen2.5-7b-q4_k_m.gguf"
    assert "awq variant: vLLM's AWQ needs compute capability >= 7.5" in model.reason
    (awq_only,) = plan_one(machine("v100"), awq_7b()).models
    assert not awq_only.fits
    assert "compute capability >= 7.5; found Tesla V100-SXM2-32GB (7.0)" in awq_only.reason


def test_mig_instance_is_addressed_by_its_uuid() -> None:
    """vLLM reaches a MIG instance through CUDA_VISIBLE_DEVICES=MIG-<uuid>, never tensor-parallel."""
    (model,) = plan_one(machine("h100_mig"), awq_7b()).models
    assert model.cuda_visible_devices == "MIG-7a6b5c4d-3e2f-5a1b-8c9d-0e1f2a3b4c5d"
    assert model.tensor_parallel_size == 1


def test_the_big_model_chooses_first_and_each_gpu_serves_one_model() -> None:
    """On 2x A100 the 70B takes both GPUs; the 7B then runs its GGUF variant on the CPU."""
    plan = make_plan(machine("a100_40gb_x2"), [awq_7b(), gguf_7b(), awq_70b()], SETTINGS)
    small, big = plan.models
    assert (big.name, big.engine, big.tensor_parallel_size) == ("llama-3.1-70b", "vllm", 2)
    assert (small.name, small.engine) == ("qwen2.5-7b", "llamacpp")
    assert small.fits
    assert "awq variant: every capable GPU already serves a model" in small.reason


def test_model_that_fits_nowhere_is_reported_among_the_others() -> None:
    """On the MIG box the 70B fits no instance and is not started; the 7B still gets its instance."""
    plan = make_plan(machine("h100_mig"), [awq_70b(), awq_7b()], SETTINGS)
    assert plan.fitting().keys() == {"qwen2.5-7b"}
    big = next(m for m in plan.models if m.name == "llama-3.1-70b")
    assert big.engine == "none"
    assert "awq: needs" in big.reason


def test_gpu_with_too_little_free_memory() -> None:
    """Another process holds most of the H100: the 70B does not fit; the 7B fits in what is free and
    asks vLLM for no more than that share."""
    busy: Gpu = msgspec.structs.replace(machine("h100_80gb").gpus[0], memory_free_mib=20_000)
    hardware = msgspec.structs.replace(machine("h100_80gb"), gpus=(busy,))
    (big,) = plan_one(hardware, awq_70b()).models
    assert not big.fits
    assert "the most a free GPU offers is 19.1 GiB" in big.reason  # 24% of 79.6 GiB
    (small,) = plan_one(hardware, awq_7b()).models
    assert small.fits
    assert small.gpu_memory_utilization == 0.24


def test_vllm_missing_falls_back_to_gguf_and_notes_it() -> None:
    """A GPU box without the GPU extra: the AWQ variant cannot run, the GGUF one serves from the CPU."""
    plan = make_plan(
        machine("h100_80gb"), [awq_7b(), gguf_7b()], SETTINGS, vllm_problem="vLLM is not installed"
    )
    (model,) = plan.models
    assert (model.engine, model.fits) == ("llamacpp", True)
    assert "vLLM is not installed" in plan.notes


def test_gguf_larger_than_ram_does_not_fit() -> None:
    """A 40 GB GGUF on a 32 GiB machine is refused with the numbers."""
    small_box = Hardware(cpu=msgspec.structs.replace(machine("cpu_only").cpu, ram_total_mib=32768))
    huge = msgspec.structs.replace(gguf_7b(), size_bytes=40 * GIB)
    (model,) = plan_one(small_box, huge).models
    assert not model.fits
    assert "of RAM; 32.0 GiB is left for models" in model.reason


def test_a_model_added_while_serving_is_planned_in_what_the_running_ones_leave() -> None:
    """Beside a running GGUF the RAM it takes is gone: a second 7B fits a 32 GiB box only if both do, and
    the refusal says what is left."""
    small_box = Hardware(cpu=msgspec.structs.replace(machine("cpu_only").cpu, ram_total_mib=32768))
    (running,) = plan_one(small_box, gguf_7b("first")).models
    assert running.fits
    beside = plan_beside(small_box, [running], [gguf_7b("second")], SETTINGS)
    assert (beside.engine, beside.fits) == ("llamacpp", True)
    assert beside.needed_bytes <= small_box.cpu.ram_available_bytes - running.needed_bytes
    big = msgspec.structs.replace(gguf_7b("big"), size_bytes=20 * GIB)
    refused = plan_beside(small_box, [running], [big], SETTINGS)
    assert not refused.fits
    left = (small_box.cpu.ram_available_bytes - running.needed_bytes) / GIB
    assert f"of RAM; {left:.1f} GiB is left for models" in refused.reason
    assert plan_beside(small_box, [], [big], SETTINGS).fits, "alone it would fit"


def test_a_model_added_while_serving_never_takes_a_gpu_a_worker_holds() -> None:
    """On two A100s with one serving a 7B, a new 7B gets the other GPU; with both held it fits nowhere."""
    two = machine("a100_40gb_x2")
    (first,) = make_plan(two, [awq_7b("first")], SETTINGS).models
    second = plan_beside(two, [first], [awq_7b("second")], SETTINGS)
    assert second.fits
    assert set(second.devices).isdisjoint(first.devices)
    third = plan_beside(two, [first, second], [awq_7b("third"), gguf_7b("third")], SETTINGS)
    assert (third.engine, third.devices) == ("llamacpp", ("CPU",)), "the GGUF variant on the CPU instead"


def test_settings_shape_the_budget() -> None:
    """Context, concurrency, threads and memory share come from the settings."""
    settings = Settings(
        home=Path("/unused"),
        workers=WorkerSettings(context_length=2048, threads=3),
        gpu=GpuSettings(memory_utilization=0.8, max_num_seqs=4),
    )
    (gpu_model,) = plan_one(machine("h100_80gb"), awq_7b(), settings=settings).models
    assert (gpu_model.context_length, gpu_model.concurrency, gpu_model.gpu_memory_utilization) == (
        2048,
        4,
        0.8,
    )
    (cpu_model,) = plan_one(machine("cpu_only"), gguf_7b(), settings=settings).models
    assert (cpu_model.threads, cpu_model.context_length, cpu_model.concurrency) == (3, 2048, 16)
    assert cpu_model.kv_pool_tokens == 16 * 2048  # room for every slot's whole context


def test_each_request_gets_the_trained_context_and_the_slots_share_a_pool() -> None:
    """By default a request may use the model's whole trained context, whatever the slots; the pool holds
    every slot's context where the RAM share allows, and the plan says so in tokens and GiB."""
    settings = Settings(home=Path("/unused"))
    (model,) = plan_one(machine("cpu_only"), gguf_7b(), settings=settings).models
    assert model.context_length == 32768
    assert model.kv_pool_tokens >= model.context_length
    assert model.kv_pool_tokens % 256 == 0
    assert model.kv_cache_bytes == model.kv_pool_tokens * gguf_7b().kv_bytes_per_token()
    assert "16 slots, each its own KV stream of 32768 tokens" in model.reason  # the box's RAM holds them all
    room = (machine("cpu_only").cpu.ram_available_bytes - gguf_7b().size_bytes - 512 * 2**20) * 0.5
    assert model.kv_cache_bytes <= max(room, model.context_length * gguf_7b().kv_bytes_per_token())


def test_a_small_memory_share_still_leaves_one_whole_context() -> None:
    """However small the share, a pool is at least one context (else the model does not fit at all)."""
    settings = Settings(home=Path("/unused"), workers=WorkerSettings(kv_memory_share=0.0001))
    (model,) = plan_one(machine("cpu_only"), gguf_7b(), settings=settings).models
    assert model.kv_pool_tokens == model.context_length == 32768
    fixed = Settings(home=Path("/unused"), workers=WorkerSettings(kv_pool_tokens=40000, parallel=2))
    (model,) = plan_one(machine("cpu_only"), gguf_7b(), settings=fixed).models
    assert (model.kv_pool_tokens, model.concurrency) == (40000, 2)
    assert "2 slots share a KV pool of 40000 tokens" in model.reason  # less than two whole contexts


def test_unknown_architecture_uses_the_parameter_approximation() -> None:
    """Without the shape, KV per token ~ 128 KiB at 8B parameters (Llama-3-8B's exact value)."""
    eight_b = msgspec.structs.replace(gguf_7b(), parameters=8_000_000_000)
    assert eight_b.kv_bytes_per_token() == 128 * 1024
    assert estimate_parameters(4_000_000_000, "Q8_0") == int(4e9 * 8 / 8.5)
    assert estimate_parameters(1000, "never-heard-of") == int(1000 * 8 / 4.5)


def test_unknown_format_is_reported() -> None:
    """A format no engine serves is a clear plan entry, not an exception."""
    odd = msgspec.structs.replace(gguf_7b(), format="exl2")
    (model,) = plan_one(machine("cpu_only"), odd).models
    assert not model.fits
    assert "unknown model format 'exl2'" in model.reason
