"""Facts about the machine the appliance runs on: CPU, memory and NVIDIA GPUs (through NVML)."""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Any

import msgspec

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
MIB = 1024 * 1024
MIG_ENABLED = 1
"""pynvml.NVML_DEVICE_MIG_ENABLE: the current MIG mode of a GPU that is split into instances."""
NVML_TEMPERATURE_GPU = 0
"""pynvml.NVML_TEMPERATURE_GPU: the GPU die sensor."""


class Cpu(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The host's processor and memory."""

    model: str = "unknown"
    physical_cores: int = 1
    ram_total_mib: int = 0
    ram_available_mib: int | None = None
    """Memory free for new processes at detection time; None (described machines) means all of it."""
    avx2: bool = False
    avx512: bool = False

    @property
    def ram_available_bytes(self) -> int:
        """Memory a new worker may use."""
        available = self.ram_total_mib if self.ram_available_mib is None else self.ram_available_mib
        return available * MIB


class MigInstance(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One MIG instance of a GPU: a slice with its own memory, addressed by its UUID."""

    profile: str
    """The instance's profile as nvidia-smi names it, e.g. `3g.40gb`."""
    memory_total_mib: int
    memory_free_mib: int | None = None
    uuid: str = ""


class Gpu(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One NVIDIA GPU as NVML reports it (memory in MiB, nvidia-smi's unit)."""

    index: int
    name: str
    memory_total_mib: int
    compute_capability: tuple[int, int]
    memory_free_mib: int | None = None
    """None (described machines) means all of it is free."""
    uuid: str = ""
    mig_enabled: bool = False
    mig_instances: tuple[MigInstance, ...] = ()

    @property
    def free_mib(self) -> int:
        """Memory not held by any process now."""
        return self.memory_total_mib if self.memory_free_mib is None else self.memory_free_mib


class Hardware(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Everything the planner needs to know about a machine, detected or described in a JSON file."""

    cpu: Cpu = Cpu()
    gpus: tuple[Gpu, ...] = ()
    driver_version: str = ""
    cuda_version: str = ""
    gpu_note: str = ""
    """Why there are no GPUs (no NVML, NVML failed, none found); empty when GPUs were found."""


def physical_cores(cpuinfo: Path = CPUINFO) -> int:
    """Physical CPU cores (hyper-threads not counted): llama.cpp runs best with one thread per core."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not key and core_id:
            cores.add((physical_id, core_id))
            physical_id = core_id = ""
    return len(cores) or os.cpu_count() or 1


def _first_value(text: str, key: str) -> str:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def _meminfo_mib(text: str, key: str) -> int | None:
    value = _first_value(text, key).removesuffix("kB").strip()
    return int(value) // 1024 if value.isdigit() else None


def detect_cpu(cpuinfo: Path = CPUINFO, meminfo: Path = MEMINFO) -> Cpu:
    """CPU model, physical cores, RAM and vector extensions from /proc (defaults where unreadable)."""
    try:
        cpu_text = cpuinfo.read_text()
    except OSError:
        cpu_text = ""
    try:
        mem_text = meminfo.read_text()
    except OSError:
        mem_text = ""
    flags = set(_first_value(cpu_text, "flags").split())
    return Cpu(
        model=_first_value(cpu_text, "model name") or "unknown",
        physical_cores=physical_cores(cpuinfo),
        ram_total_mib=_meminfo_mib(mem_text, "MemTotal") or 0,
        ram_available_mib=_meminfo_mib(mem_text, "MemAvailable"),
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
    )


def load_nvml() -> Any | None:
    """The `pynvml` module (nvidia-ml-py), or None where it is not installed; it ships no type hints."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: str | bytes) -> str:
    # Old nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


def _mig_instances(nvml: Any, handle: Any) -> tuple[bool, tuple[MigInstance, ...]]:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:
        return False, ()  # GPUs without MIG support answer NotSupported
    if current != MIG_ENABLED:
        return False, ()
    instances = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:
            continue  # an empty slot: fewer instances are configured than the GPU could hold
        memory = nvml.nvmlDeviceGetMemoryInfo(mig)
        name = _text(nvml.nvmlDeviceGetName(mig))
        instances.append(
            MigInstance(
                profile=name.rpartition("MIG ")[2] or name,
                memory_total_mib=memory.total // MIB,
                memory_free_mib=memory.free // MIB,
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
            )
        )
    return True, tuple(instances)


def _read_gpu(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    mig_enabled, instances = _mig_instances(nvml, handle)
    return Gpu(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_total_mib=memory.total // MIB,
        memory_free_mib=memory.free // MIB,
        compute_capability=(int(major), int(minor)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        mig_enabled=mig_enabled,
        mig_instances=instances,
    )


def detect_gpus(nvml: Any | None) -> tuple[tuple[Gpu, ...], str, str, str]:
    """GPUs, driver version, CUDA version and a note saying why there are none; never raises."""
    if nvml is None:
        return (), "", "", "no NVIDIA GPU: nvidia-ml-py (pynvml) is not installed"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        # On a machine without the NVIDIA driver this is NVMLError_LibraryNotFound.
        return (), "", "", f"no NVIDIA GPU: NVML did not start ({error})"
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
        gpus = tuple(_read_gpu(nvml, index) for index in range(nvml.nvmlDeviceGetCount()))
    except nvml.NVMLError as error:
        return (), "", "", f"no NVIDIA GPU used: NVML failed while reading the devices ({error})"
    finally:
        # Shutting down a half-started NVML has nothing left to release.
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    note = "" if gpus else "no NVIDIA GPU: the NVIDIA driver reports none"
    return gpus, driver, cuda_version, note


def detect_hardware(nvml: Any | None) -> Hardware:
    """Detect this machine; `nvml` is `load_nvml()` (None: no pynvml, so CPU only with the reason)."""
    gpus, driver, cuda, note = detect_gpus(nvml)
    return Hardware(cpu=detect_cpu(), gpus=gpus, driver_version=driver, cuda_version=cuda, gpu_note=note)


class GpuTelemetry(msgspec.Struct, frozen=True):
    """What one GPU is doing right now, for /metrics."""

    index: int
    name: str
    utilization_ratio: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_celsius: float
    power_watts: float


def read_gpu_telemetry(nvml: Any) -> list[GpuTelemetry]:
    """Utilisation, memory, temperature and power of every GPU; a GPU NVML cannot read is left out."""
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError:
        return []  # the driver went away: a scrape without GPU samples, not a failed scrape
    found = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(
                GpuTelemetry(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    utilization_ratio=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
                    memory_used_bytes=memory.used,
                    memory_total_bytes=memory.total,
                    temperature_celsius=float(nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU)),
                    power_watts=nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                )
            )
        except nvml.NVMLError:
            continue  # a GPU that fell off the bus must not break the whole scrape
    return found
