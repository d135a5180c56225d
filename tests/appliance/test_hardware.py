"""Hardware detection: CPU facts from /proc, GPUs through NVML, and a clear reason whenever there are none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.hardware import (
    detect_cpu,
    detect_gpus,
    detect_hardware,
    load_nvml,
    physical_cores,
    read_gpu_telemetry,
)
from appliance.planner import make_plan
from appliance.settings import Settings
from tests.appliance.fake_nvml import MIB, FakeDevice, FakeNvml, h100
from tests.appliance.model_specs import gguf_7b

CPUINFO = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw
"""
MEMINFO = "MemTotal:       65536000 kB\nMemFree:        1000 kB\nMemAvailable:   32768000 kB\n"


def test_cpu_facts_come_from_proc(tmp_path: Path) -> None:
    """Model name, physical cores (hyper-threads folded), RAM in MiB and AVX flags."""
    cpuinfo, meminfo = tmp_path / "cpuinfo", tmp_path / "meminfo"
    cpuinfo.write_text(CPUINFO)
    meminfo.write_text(MEMINFO)
    cpu = detect_cpu(cpuinfo, meminfo)
    assert cpu.model == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert cpu.physical_cores == 2 == physical_cores(cpuinfo)
    assert (cpu.ram_total_mib, cpu.ram_available_mib) == (64000, 32000)
    assert cpu.avx2
    assert cpu.avx512


def test_cpu_without_avx512_and_unreadable_meminfo(tmp_path: Path) -> None:
    """A CPU that lacks AVX-512 says so; missing /proc/meminfo means unknown RAM, not a crash."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.replace(" avx512f avx512bw", ""))
    cpu = detect_cpu(cpuinfo, tmp_path / "absent")
    assert cpu.avx2
    assert not cpu.avx512
    assert cpu.ram_total_mib == 0


def test_nvml_reports_gpus_driver_and_cuda() -> None:
    """Two GPUs: names, memory, compute capability, driver and CUDA version as NVML gives them."""
    nvml = FakeNvml([h100(free_mib=70_000, uuid="GPU-a"), h100(free_mib=81_000, uuid="GPU-b")])
    gpus, driver, cuda, note = detect_gpus(nvml)
    assert (driver, cuda, note) == ("550.54.15", "12.4", "")
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert (gpus[0].memory_total_mib, gpus[0].memory_free_mib) == (81559, 70_000)
    assert gpus[0].compute_capability == (9, 0)
    assert [g.uuid for g in gpus] == ["GPU-a", "GPU-b"]
    assert not gpus[0].mig_enabled


def test_mig_instances_are_listed_with_their_profiles() -> None:
    """A GPU in MIG mode lists each configured instance; empty slots are skipped."""
    big = FakeDevice("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40448, 40000, uuid="MIG-big")
    small = FakeDevice("NVIDIA H100 80GB HBM3 MIG 2g.20gb", 20096, 20000, uuid="MIG-small")
    gpu = h100(mig_mode=1, migs=[big, None, small])
    (found,), _, _, _ = detect_gpus(FakeNvml([gpu]))
    assert found.mig_enabled
    assert [(m.profile, m.memory_total_mib, m.uuid) for m in found.mig_instances] == [
        ("3g.40gb", 40448, "MIG-big"),
        ("2g.20gb", 20096, "MIG-small"),
    ]


def test_gpu_without_mig_support_is_a_whole_gpu() -> None:
    """NVML answers NotSupported for MIG on older GPUs (a T4); that is not an error."""
    t4 = FakeDevice("Tesla T4", 15360, 15000, (7, 5), mig_mode=None)
    (found,), _, _, note = detect_gpus(FakeNvml([t4]))
    assert (found.mig_enabled, found.compute_capability, note) == (False, (7, 5), "")


def test_pynvml_not_installed_gives_none_and_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nvidia-ml-py, load_nvml is None (a None entry in sys.modules makes the import fail)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert load_nvml() is None
    hardware = detect_hardware(None)
    assert hardware.gpus == ()
    assert "not installed" in hardware.gpu_note


def test_nvml_library_missing_gives_a_cpu_plan_with_the_reason() -> None:
    """No NVIDIA driver: nvmlInit raises (LibraryNotFound for real); the plan is llama.cpp on the CPU."""
    nvml = FakeNvml([h100()], failing=frozenset({"nvmlInit"}))
    hardware = detect_hardware(nvml)
    assert hardware.gpus == ()
    assert "NVML did not start" in hardware.gpu_note
    plan = make_plan(hardware, [gguf_7b()], Settings(home=Path("/unused")))
    (model,) = plan.models
    assert (model.engine, model.fits, model.threads) == ("llamacpp", True, hardware.cpu.physical_cores)
    assert "NVML did not start" in model.reason
    assert plan.notes == (hardware.gpu_note,)


def test_nvml_raising_while_reading_devices_is_a_reason_not_a_crash() -> None:
    """A driver that fails mid-read (memory info raising) leaves no GPUs and says why."""
    nvml = FakeNvml([h100()], failing=frozenset({"nvmlDeviceGetMemoryInfo"}))
    gpus, _, _, note = detect_gpus(nvml)
    assert gpus == ()
    assert "NVML failed while reading the devices" in note


def test_real_detection_on_this_machine_never_raises() -> None:
    """The real pynvml against whatever this machine has: GPUs, or none with the reason recorded."""
    hardware = detect_hardware(load_nvml())
    assert hardware.cpu.physical_cores == physical_cores()
    assert bool(hardware.gpus) != bool(hardware.gpu_note)


def test_telemetry_reads_each_gpu_and_skips_one_that_fails() -> None:
    """Utilisation, memory, temperature and power per GPU; a GPU raising mid-scrape is left out."""
    busy = h100(free_mib=1559, utilization_percent=87, temperature_c=64, power_mw=512_345)
    (gpu,) = read_gpu_telemetry(FakeNvml([busy]))
    assert (gpu.index, gpu.utilization_ratio, gpu.temperature_celsius) == (0, 0.87, 64.0)
    assert gpu.memory_total_bytes == 81559 * MIB
    assert gpu.memory_used_bytes == 80000 * MIB
    assert gpu.power_watts == pytest.approx(512.345)
    assert read_gpu_telemetry(FakeNvml([busy], failing=frozenset({"nvmlDeviceGetTemperature"}))) == []
    assert read_gpu_telemetry(FakeNvml([busy], failing=frozenset({"nvmlDeviceGetCount"}))) == []
