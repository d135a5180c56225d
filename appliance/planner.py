"""From the hardware and the models, a plan: which engine serves each model, where, and whether it fits.

The rules follow the serving engines' own guidance:
- an AWQ model goes to vLLM on a GPU of compute capability >= 7.5 (AWQ's floor in vLLM) that has room for its
  weights plus the KV cache of `max_num_seqs` full contexts; from 8.0 on, vLLM's Marlin AWQ kernel is used;
  a model too large for one GPU is split with tensor parallelism over 2, 4 or 8 whole GPUs (never over MIG
  instances, which NCCL cannot join);
- a GGUF model goes to llama.cpp on the CPU, with one thread per physical core, if RAM holds it;
- several descriptions with the same name are variants of one model: the first AWQ variant that fits a GPU
  wins, else the first GGUF variant that fits the CPU; a model that fits nowhere is reported and not started.
Each GPU or MIG instance serves at most one model, so vLLM's memory share never competes with another's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from appliance.engines.llamacpp.sizing import default_parallel, own_streams, pool_size
from appliance.engines.vllm.tool_parsers import tool_parser_for
from appliance.hardware import MIB, Gpu, Hardware
from appliance.registry.models import ModelInfo
from appliance.settings import Settings

GIB = 1024 * MIB
VLLM_MIN_CAPABILITY = (7, 5)
MARLIN_MIN_CAPABILITY = (8, 0)
TENSOR_PARALLEL_SIZES = (2, 4, 8)
KV_BYTES_PER_VALUE = 2
"""Both engines keep the KV cache in fp16 by default."""
VLLM_OVERHEAD_BYTES = 2 * GIB
"""Per GPU: CUDA context, activations and CUDA graphs of a vLLM worker, a rule of thumb with headroom."""
LLAMACPP_OVERHEAD_BYTES = 512 * MIB
VLLM_DEFAULT_CONTEXT = 4096
"""vLLM's --max-model-len when the setting is 0: its KV cache is planned for max_num_seqs such contexts."""
POOL_GRANULE = 256
"""A planned KV pool is a whole number of these cells."""
"""Compute buffers and the Python worker around llama.cpp."""
KV_PER_TOKEN_AT_8B = 128 * 1024
KV_SCALING_EXPONENT = 0.42
"""Without the architecture, KV bytes per token ~ 128 KiB x (parameters / 8e9) ** 0.42: fitted to the fp16
caches of Llama-3-8B (128 KiB), Llama-3-70B (320 KiB) and SmolLM2-135M (22.5 KiB), all grouped-query
attention models; older full multi-head models (Llama-2) need up to 4x more."""
BITS_PER_WEIGHT = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_1": 6.0, "Q5_K_M": 5.69,
    "Q5_0": 5.5, "Q5_K_S": 5.54, "Q4_1": 5.0, "Q4_K_M": 4.85, "Q4_K_S": 4.58, "Q4_0": 4.5,
    "IQ4_NL": 4.5, "IQ4_XS": 4.25, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 3.35, "AWQ": 4.25,
}  # fmt: skip
"""Average bits per weight of llama.cpp's quantizations (llama.cpp's quantize table), to estimate size."""
DEFAULT_BITS_PER_WEIGHT = 4.5


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the planner needs to know about a model: its format, size and shape."""

    name: str
    format: str
    """`gguf` (llama.cpp) or `awq` (vLLM)."""
    parameters: int
    quantization: str
    context_length: int
    size_bytes: int
    """Size of the weights on disk, which is what they take in memory."""
    path: str = ""
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    tool_parser: str = ""
    """vLLM's tool-call parser for an AWQ model ('' for none): `tool_choice: auto` needs one."""

    def kv_bytes_per_token(self) -> int:
        """Exact from the shape where known (2 x layers x kv_heads x head_dim x 2 bytes), else estimated."""
        if self.layers and self.kv_heads and self.head_dim:
            return 2 * self.layers * self.kv_heads * self.head_dim * KV_BYTES_PER_VALUE
        return int(KV_PER_TOKEN_AT_8B * (max(self.parameters, 1) / 8e9) ** KV_SCALING_EXPONENT)


class ModelPlan(msgspec.Struct, frozen=True):
    """The plan for one model: engine, devices, memory budget, and why."""

    name: str
    engine: str
    """`vllm`, `llamacpp`, or `none` when it fits nowhere."""
    fits: bool
    reason: str
    format: str = ""
    path: str = ""
    devices: tuple[str, ...] = ()
    cuda_visible_devices: str = ""
    tensor_parallel_size: int = 0
    quantization: str = ""
    context_length: int = 0
    concurrency: int = 0
    threads: int = 0
    gpu_memory_utilization: float = 0.0
    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    overhead_bytes: int = 0
    available_bytes: int = 0
    """What the chosen devices offer together (for a model that fits nowhere: the best offer found)."""
    tool_parser: str = ""
    """vLLM only: the tool-call parser it is started with ('' = no automatic tool calls)."""
    kv_pool_tokens: int = 0
    """llama.cpp only: the KV cells its `concurrency` slots share (each request up to `context_length`)."""

    @property
    def needed_bytes(self) -> int:
        """Weights plus KV cache plus engine overhead, over all its devices."""
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


class Plan(msgspec.Struct, frozen=True):
    """Per model, what runs where; `notes` say what about the machine shaped the plan."""

    hardware: Hardware
    models: tuple[ModelPlan, ...]
    notes: tuple[str, ...] = ()

    def fitting(self) -> dict[str, ModelPlan]:
        """The models that will be started, by name."""
        return {m.name: m for m in self.models if m.fits}


NO_TOOL_PARSER = "no tool parser known for its architecture: no tool_choice auto (`models set --tool-parser`)"


def estimate_parameters(size_bytes: int, quantization: str) -> int:
    """Parameter count from the weights' size and the quantization's average bits per weight."""
    bits = BITS_PER_WEIGHT.get(quantization.upper(), DEFAULT_BITS_PER_WEIGHT)
    return int(size_bytes * 8 / bits)


def spec_from_model(model: ModelInfo) -> ModelSpec:
    """A registry model as the planner sees it (its parameter count estimated from size and quantization)."""
    return ModelSpec(
        name=model.name,
        format=model.format,
        parameters=estimate_parameters(model.size_bytes, model.quantization),
        quantization=model.quantization,
        context_length=model.context_length,
        size_bytes=model.size_bytes,
        path=str(model.path),
        tool_parser=tool_parser_for(model.architecture, model.tool_parser) if model.format == "awq" else "",
    )


@dataclass(frozen=True)
class _Target:
    """A GPU or MIG instance that can hold one vLLM worker."""

    label: str
    visible: str
    """Its CUDA_VISIBLE_DEVICES entry: the GPU index, or the MIG instance's UUID."""
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]
    whole_gpu: bool

    def share(self, utilization: float) -> float:
        """The `--gpu-memory-utilization` vLLM may ask for here: the setting, or less where other processes
        hold memory (vLLM refuses to start when less than its share is free), in whole percent."""
        return min(utilization, math.floor(self.free_bytes / self.total_bytes * 100) / 100)

    def budget(self, utilization: float) -> int:
        """The bytes that share gives."""
        return int(self.total_bytes * self.share(utilization))


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def _targets(gpus: Iterable[Gpu]) -> list[_Target]:
    targets = []
    for gpu in gpus:
        if not gpu.mig_enabled:
            targets.append(
                _Target(
                    f"GPU {gpu.index} ({gpu.name})", str(gpu.index), gpu.memory_total_mib * MIB,
                    gpu.free_mib * MIB, gpu.compute_capability, whole_gpu=True,
                )
            )  # fmt: skip
            continue
        for slot, mig in enumerate(gpu.mig_instances):
            free = mig.memory_total_mib if mig.memory_free_mib is None else mig.memory_free_mib
            targets.append(
                _Target(
                    f"GPU {gpu.index} MIG {mig.profile}", mig.uuid or f"MIG-{gpu.index}-{slot}",
                    mig.memory_total_mib * MIB, free * MIB, gpu.compute_capability, whole_gpu=False,
                )
            )  # fmt: skip
    return targets


def ram_for_models(hardware: Hardware, settings: Settings) -> int:
    """RAM the llama.cpp models may take together: what is available, within `[residency] ram_budget_gib`."""
    available = hardware.cpu.ram_available_bytes
    budget = settings.residency.ram_budget_bytes
    if not budget:
        return available
    return min(available, budget) if hardware.cpu.ram_total_mib else budget


class _Planner:
    """Places models one by one, remembering which GPUs and how much RAM earlier models took."""

    def __init__(self, hardware: Hardware, settings: Settings, vllm_problem: str) -> None:
        self.hardware = hardware
        self.settings = settings
        self.vllm_problem = vllm_problem
        self.free_targets = _targets(hardware.gpus)
        budget = settings.residency.ram_budget_bytes
        self.ram_limited = bool(hardware.cpu.ram_total_mib or budget)
        """Whether RAM bounds the llama.cpp models: known RAM, or a `[residency]` budget."""
        self.ram_left = ram_for_models(hardware, settings)

    def context(self, spec: ModelSpec, default: int) -> int:
        """Tokens per request: the setting (0: `default`, or the trained context when that is 0), never
        more than the model was trained for."""
        wanted = self.settings.workers.context_length or default or spec.context_length
        return min(wanted, spec.context_length)

    def place(self, variants: Sequence[ModelSpec]) -> ModelPlan:
        """The first variant that fits (AWQ on a GPU before GGUF on the CPU), else why none does."""
        failures: list[ModelPlan] = []
        ordered = [v for v in variants if v.format == "awq"] + [v for v in variants if v.format != "awq"]
        for spec in ordered:
            if spec.format == "awq":
                attempt = self.on_gpu(spec)
            elif spec.format == "gguf":
                attempt = self.on_cpu(spec)
            else:
                attempt = ModelPlan(spec.name, "none", False, f"unknown model format {spec.format!r}")
            if attempt.fits and failures:
                skipped = "; ".join(f"{f.format or '?'} variant: {f.reason}" for f in failures)
                return msgspec.structs.replace(attempt, reason=f"{attempt.reason} ({skipped})")
            if attempt.fits:
                return attempt
            failures.append(attempt)
        reason = "; ".join(f"{f.format or '?'}: {f.reason}" for f in failures)
        return msgspec.structs.replace(failures[0], engine="none", reason=f"fits nowhere ({reason})")

    def on_gpu(self, spec: ModelSpec) -> ModelPlan:
        concurrency = self.settings.gpu.max_num_seqs
        context = self.context(spec, VLLM_DEFAULT_CONTEXT)
        base = ModelPlan(
            spec.name, "vllm", False, "", format=spec.format, path=spec.path, context_length=context,
            concurrency=concurrency, weights_bytes=spec.size_bytes,
            kv_cache_bytes=spec.kv_bytes_per_token() * context * concurrency, tool_parser=spec.tool_parser,
        )  # fmt: skip
        if not self.hardware.gpus:
            return msgspec.structs.replace(
                base, reason=self.hardware.gpu_note or "no NVIDIA GPU on this machine"
            )
        capable = [t for t in self.free_targets if t.capability >= VLLM_MIN_CAPABILITY]
        if not capable:
            found = ", ".join(
                sorted({f"{g.name} ({'.'.join(map(str, g.compute_capability))})" for g in self.hardware.gpus})
            )
            if any(t.capability >= VLLM_MIN_CAPABILITY for t in _targets(self.hardware.gpus)):
                return msgspec.structs.replace(base, reason="every capable GPU already serves a model")
            return msgspec.structs.replace(
                base, reason=f"vLLM's AWQ needs compute capability >= 7.5; found {found}"
            )
        utilization = self.settings.residency.gpu_budget_share or self.settings.gpu.memory_utilization
        best_offer = 0
        for size in (1, *TENSOR_PARALLEL_SIZES):
            pool = capable if size == 1 else [t for t in capable if t.whole_gpu]
            if len(pool) < size:
                break
            need = math.ceil((base.weights_bytes + base.kv_cache_bytes) / size) + VLLM_OVERHEAD_BYTES
            by_budget = sorted(pool, key=lambda t: t.budget(utilization))
            best_offer = max(best_offer, by_budget[-1].budget(utilization))
            if size == 1:
                # The smallest that holds it (best fit), leaving the big ones for big models.
                chosen = [t for t in by_budget if t.budget(utilization) >= need][:1]
            else:
                # The roomiest, since the fullest member decides.
                chosen = by_budget[-size:]
            share = min((t.share(utilization) for t in chosen), default=0.0)
            if chosen and min(int(t.total_bytes * share) for t in chosen) >= need:
                return self.take_gpus(base, chosen, share)
        per_gpu = base.weights_bytes + base.kv_cache_bytes + VLLM_OVERHEAD_BYTES
        return msgspec.structs.replace(
            base,
            overhead_bytes=VLLM_OVERHEAD_BYTES,
            available_bytes=best_offer,
            reason=(
                f"needs {_gib(per_gpu)} (weights {_gib(base.weights_bytes)}, KV cache "
                f"{_gib(base.kv_cache_bytes)} for {concurrency} x {context} tokens, overhead "
                f"{_gib(VLLM_OVERHEAD_BYTES)}); the most a free GPU offers is {_gib(best_offer)} "
                f"(up to {utilization:.0%} of its memory, and no more than is free)"
            ),
        )

    def take_gpus(self, base: ModelPlan, chosen: list[_Target], share: float) -> ModelPlan:
        size = len(chosen)
        marlin = all(t.capability >= MARLIN_MIN_CAPABILITY for t in chosen)
        if self.vllm_problem:
            return msgspec.structs.replace(base, reason=self.vllm_problem)
        for target in chosen:
            self.free_targets.remove(target)
        kernel = "Marlin AWQ kernel" if marlin else "AWQ kernel (no Marlin below compute capability 8.0)"
        split = f"tensor-parallel over {size} GPUs" if size > 1 else "one device"
        return msgspec.structs.replace(
            base,
            fits=True,
            reason=(
                f"GPU with compute capability >= 7.5 and room for weights and KV cache; {split}; {kernel}; "
                + (f"tool calls: {base.tool_parser} parser" if base.tool_parser else NO_TOOL_PARSER)
            ),
            devices=tuple(t.label for t in chosen),
            cuda_visible_devices=",".join(t.visible for t in chosen),
            tensor_parallel_size=size,
            quantization="awq_marlin" if marlin else "awq",
            gpu_memory_utilization=share,
            overhead_bytes=VLLM_OVERHEAD_BYTES * size,
            available_bytes=sum(int(t.total_bytes * share) for t in chosen),
        )

    def kv_pool(self, spec: ModelSpec, context: int, slots: int) -> int:
        """A llama.cpp worker's pool of cells: the setting, else every slot's full context as far as the
        memory share allows, and at least one full context (a model with less room does not fit)."""
        workers = self.settings.workers
        if workers.kv_pool_tokens or not self.hardware.cpu.ram_total_mib:
            return pool_size(context, slots, workers.kv_pool_tokens)
        room = max(self.ram_left - spec.size_bytes - LLAMACPP_OVERHEAD_BYTES, 0) * workers.kv_memory_share
        within = int(room // max(spec.kv_bytes_per_token(), 1)) // POOL_GRANULE * POOL_GRANULE
        return max(context, min(context * slots, within))

    def on_cpu(self, spec: ModelSpec) -> ModelPlan:
        context = self.context(spec, 0)
        threads = self.settings.workers.threads or self.hardware.cpu.physical_cores
        slots = self.settings.workers.parallel or default_parallel(threads)
        pool = self.kv_pool(spec, context, slots)
        # Each request may use a whole context; the slots share the pool, or each has its own stream
        # when the pool holds them all.
        plan = ModelPlan(
            spec.name, "llamacpp", False, "", format=spec.format, path=spec.path, devices=("CPU",),
            quantization=spec.quantization, context_length=context, concurrency=slots, threads=threads,
            weights_bytes=spec.size_bytes, kv_cache_bytes=spec.kv_bytes_per_token() * pool,
            overhead_bytes=LLAMACPP_OVERHEAD_BYTES, available_bytes=self.ram_left, kv_pool_tokens=pool,
        )  # fmt: skip
        if self.ram_limited and plan.needed_bytes > self.ram_left:
            return msgspec.structs.replace(
                plan,
                reason=f"needs {_gib(plan.needed_bytes)} of RAM; {_gib(self.ram_left)} is left for models",
            )
        self.ram_left -= plan.needed_bytes
        why = "GGUF on the CPU"
        if not self.hardware.gpus:
            why = f"{self.hardware.gpu_note or 'no NVIDIA GPU'}; GGUF on the CPU"
        kv = _gib(plan.kv_cache_bytes)
        if own_streams(pool, context, slots):
            shared = f"{slots} slots, each its own KV stream of {context} tokens ({kv} in all)"
        else:
            shared = f"{slots} slots share a KV pool of {pool} tokens ({kv})"
        return msgspec.structs.replace(
            plan, fits=True, reason=f"{why}, {threads} threads (physical cores); {shared}"
        )


def make_plan(
    hardware: Hardware, models: Sequence[ModelSpec], settings: Settings, *, vllm_problem: str = ""
) -> Plan:
    """Plan `models` on `hardware`; `vllm_problem` says why vLLM cannot run here ('' = it can)."""
    groups: dict[str, list[ModelSpec]] = {}
    for spec in models:
        groups.setdefault(spec.name, []).append(spec)
    planner = _Planner(hardware, settings, vllm_problem)
    # The largest models pick their GPUs first, so a small one does not take the only big GPU.
    placed = {
        name: planner.place(variants)
        for name, variants in sorted(groups.items(), key=lambda item: -max(v.size_bytes for v in item[1]))
    }
    notes = [hardware.gpu_note] if hardware.gpu_note else []
    if vllm_problem and hardware.gpus:
        notes.append(vllm_problem)
    return Plan(hardware=hardware, models=tuple(placed[name] for name in groups), notes=tuple(notes))


def plan_beside(
    hardware: Hardware,
    serving: Sequence[ModelPlan],
    variants: Sequence[ModelSpec],
    settings: Settings,
    *,
    vllm_problem: str = "",
) -> ModelPlan:
    """Plan one model added while the `serving` plans run: the GPUs they hold and the RAM they take are
    gone first, so the new model never displaces (or shares a GPU with) a worker that is running."""
    planner = _Planner(hardware, settings, vllm_problem)
    held = {device for plan in serving for device in plan.devices}
    planner.free_targets = [target for target in planner.free_targets if target.label not in held]
    planner.ram_left -= sum(plan.needed_bytes for plan in serving if plan.engine == "llamacpp")
    return planner.place(variants)
