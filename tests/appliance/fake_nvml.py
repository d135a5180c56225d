"""A stand-in for the `pynvml` module: only the NVML calls the appliance makes, answering from a description.

Each method stands for the pynvml function of the same name (which wraps the C call of that name in
libnvidia-ml); the values are what a real H100, A100 or MIG instance reports, in NVML's units (bytes,
milliwatts, percent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

MIB = 1024 * 1024


class NVMLError(Exception):
    """Stands for pynvml.NVMLError, the base of every error NVML reports."""


@dataclass
class FakeDevice:
    """One GPU or MIG instance as NVML would report it."""

    name: str
    total_mib: int
    free_mib: int
    capability: tuple[int, int] = (9, 0)
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    mig_mode: int | None = 0
    """None: the GPU does not support MIG (NVML raises NotSupported); 1: enabled."""
    migs: list[FakeDevice | None] = field(default_factory=list)
    """MIG slots; None is an empty slot (NVML raises NotFound for it)."""
    utilization_percent: int = 0
    temperature_c: int = 40
    power_mw: int = 70_000


class FakeNvml:
    """The module object the appliance receives in place of `pynvml`."""

    NVMLError = NVMLError

    def __init__(
        self,
        devices: list[FakeDevice],
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        failing: frozenset[str] = frozenset(),
    ) -> None:
        self.devices = devices
        self.driver = driver
        self.cuda = cuda
        self.failing = failing
        """Names of calls that raise NVMLError, as a broken driver or a GPU off the bus would."""
        self.init_calls = 0

    def _check(self, call: str) -> None:
        if call in self.failing:
            raise NVMLError(f"{call}: Unknown Error")

    def nvmlInit(self) -> None:
        """Stands for pynvml.nvmlInit (loads libnvidia-ml.so.1 and starts NVML)."""
        self._check("nvmlInit")
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        """Stands for pynvml.nvmlShutdown."""

    def nvmlSystemGetDriverVersion(self) -> str:
        """Stands for pynvml.nvmlSystemGetDriverVersion."""
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        """Stands for pynvml.nvmlSystemGetCudaDriverVersion (12040 means CUDA 12.4)."""
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        """Stands for pynvml.nvmlDeviceGetCount."""
        self._check("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        """Stands for pynvml.nvmlDeviceGetHandleByIndex."""
        return self.devices[index]

    def nvmlDeviceGetName(self, device: FakeDevice) -> str:
        """Stands for pynvml.nvmlDeviceGetName."""
        return device.name

    def nvmlDeviceGetUUID(self, device: FakeDevice) -> str:
        """Stands for pynvml.nvmlDeviceGetUUID."""
        return device.uuid

    def nvmlDeviceGetMemoryInfo(self, device: FakeDevice) -> SimpleNamespace:
        """Stands for pynvml.nvmlDeviceGetMemoryInfo (a c_nvmlMemory_t with total, free, used in bytes)."""
        self._check("nvmlDeviceGetMemoryInfo")
        total, free = device.total_mib * MIB, device.free_mib * MIB
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetCudaComputeCapability(self, device: FakeDevice) -> tuple[int, int]:
        """Stands for pynvml.nvmlDeviceGetCudaComputeCapability."""
        return device.capability

    def nvmlDeviceGetMigMode(self, device: FakeDevice) -> tuple[int, int]:
        """Stands for pynvml.nvmlDeviceGetMigMode (current, pending); NotSupported on GPUs without MIG."""
        if device.mig_mode is None:
            raise NVMLError("Not Supported")
        return device.mig_mode, device.mig_mode

    def nvmlDeviceGetMaxMigDeviceCount(self, device: FakeDevice) -> int:
        """Stands for pynvml.nvmlDeviceGetMaxMigDeviceCount."""
        return len(device.migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: FakeDevice, index: int) -> FakeDevice:
        """Stands for pynvml.nvmlDeviceGetMigDeviceHandleByIndex; NotFound for an empty slot."""
        mig = device.migs[index]
        if mig is None:
            raise NVMLError("Not Found")
        return mig

    def nvmlDeviceGetUtilizationRates(self, device: FakeDevice) -> SimpleNamespace:
        """Stands for pynvml.nvmlDeviceGetUtilizationRates (percent busy over the last sample period)."""
        return SimpleNamespace(gpu=device.utilization_percent, memory=0)

    def nvmlDeviceGetTemperature(self, device: FakeDevice, sensor: int) -> int:
        """Stands for pynvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU)."""
        self._check("nvmlDeviceGetTemperature")
        return device.temperature_c

    def nvmlDeviceGetPowerUsage(self, device: FakeDevice) -> int:
        """Stands for pynvml.nvmlDeviceGetPowerUsage (milliwatts)."""
        return device.power_mw


def h100(free_mib: int = 80_000, **kwargs: Any) -> FakeDevice:
    """An H100 80GB as NVML reports it."""
    return FakeDevice("NVIDIA H100 80GB HBM3", 81559, free_mib, (9, 0), **kwargs)
