"""GPU readings through NVIDIA's NVML (``pynvml``, from the ``nvidia-ml-py`` package) when the worker runs on CUDA.

Per GPU this process can see: utilisation, memory used and total, temperature
and power draw. The heartbeat (ops/heartbeat.py) takes a reading at each beat,
puts it in its payload (``gpus``: the dashboard shows them) and sets the
``worker_gpu_*`` gauges (ops/metrics.py), labelled ``gpu`` by NVML's device
index, the one ``nvidia-smi`` shows.

``pynvml`` is imported only here and only when the device is ``cuda``: the
worker runs without it (``pip install nvidia-ml-py``, or the project's ``gpu``
extra), and without it, or without a driver, it logs once why there are no GPU
metrics. Which GPUs: those ``CUDA_VISIBLE_DEVICES`` names (a number is read as
NVML's index, which is CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; ``GPU-…``
UUIDs or their unique prefixes match exactly), or all when it is unset. A
reading NVML cannot give for a device (power on some boards, utilisation on
MIG) is None, not an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger("worker.gpu")


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment; None where NVML cannot tell."""

    index: int  # NVML's (nvidia-smi's) index: the ``gpu`` label of the gauges
    name: str
    uuid: str
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GpuMonitor:
    """Reads the GPUs this process can see through an initialised NVML (:meth:`open` makes one)."""

    def __init__(self, nvml: ModuleType, devices: list[tuple[int, Any]]) -> None:
        self._nvml = nvml
        self.devices = devices  # (NVML index, handle)
        self._closed = False

    @classmethod
    def open(cls, device: str, *, visible: str | None = None) -> GpuMonitor | None:
        """A monitor when ``device`` (models/device.py resolved it) is CUDA and NVML answers, else None.

        ``visible`` is ``CUDA_VISIBLE_DEVICES`` (read from the environment when None). Blocks while NVML
        starts (well under a second); logs why there is no monitor when the device is CUDA.
        """
        if not device.startswith("cuda"):
            return None
        try:
            import pynvml
        except ImportError:
            log.warning(
                "No GPU metrics: the nvidia-ml-py package (module pynvml) is not installed; "
                "pip install nvidia-ml-py (the project's gpu extra) to export GPU utilisation, memory, "
                "temperature and power"
            )
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - pynvml.NVMLError and whatever a broken driver raises
            log.warning(
                "No GPU metrics: NVML did not start (%s: %s); check the NVIDIA driver (nvidia-smi) in this "
                "container or host",
                type(exc).__name__,
                exc,
            )
            return None
        if visible is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            devices = visible_devices(pynvml, visible)
        except Exception as exc:  # noqa: BLE001 - an NVML error listing the devices
            log.warning("No GPU metrics: NVML could not list the GPUs (%s: %s)", type(exc).__name__, exc)
            _shutdown(pynvml)
            return None
        if not devices:
            log.warning(
                "No GPU metrics: no GPU NVML knows matches CUDA_VISIBLE_DEVICES=%r (numbers are NVML indices, "
                "as nvidia-smi shows them; or GPU-… UUIDs)",
                visible,
            )
            _shutdown(pynvml)
            return None
        log.info("GPU metrics for GPU(s) %s (NVML indices)", ", ".join(str(index) for index, _ in devices))
        return cls(pynvml, devices)

    def sample(self) -> list[GpuReading]:
        """A reading of every monitored GPU (blocks for a few milliseconds per GPU: call it off the event loop)."""
        nvml = self._nvml
        readings = []
        for index, handle in self.devices:
            utilization = _read(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            memory = _read(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            temperature = _read(lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
            milliwatts = _read(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h))
            readings.append(
                GpuReading(
                    index=index,
                    name=_text(_read(lambda h=handle: nvml.nvmlDeviceGetName(h))),
                    uuid=_text(_read(lambda h=handle: nvml.nvmlDeviceGetUUID(h))),
                    utilization_percent=float(utilization) if utilization is not None else None,
                    memory_used_bytes=int(memory.used) if memory is not None else None,
                    memory_total_bytes=int(memory.total) if memory is not None else None,
                    temperature_celsius=float(temperature) if temperature is not None else None,
                    power_watts=milliwatts / 1000.0 if milliwatts is not None else None,
                )
            )
        return readings

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _shutdown(self._nvml)


def visible_devices(nvml: ModuleType, visible: str | None) -> list[tuple[int, Any]]:
    """(NVML index, handle) of the GPUs ``visible`` (``CUDA_VISIBLE_DEVICES``) names, in its order; all when None.

    Like CUDA, the list ends at the first entry that names no GPU (``-1`` hides them all).
    """
    count = int(nvml.nvmlDeviceGetCount())
    every = [(index, nvml.nvmlDeviceGetHandleByIndex(index)) for index in range(count)]
    if visible is None:
        return every
    chosen: list[tuple[int, Any]] = []
    uuids: dict[int, str] | None = None
    for raw in visible.split(","):
        entry = raw.strip()
        if entry.isdigit():
            match = next((d for d in every if d[0] == int(entry)), None)
        elif entry:
            if uuids is None:
                uuids = {index: _text(_read(lambda h=handle: nvml.nvmlDeviceGetUUID(h))) for index, handle in every}
            wanted = entry.lower()
            found = [d for d in every if uuids[d[0]].lower().startswith(wanted)] if wanted.startswith("gpu-") else []
            match = found[0] if len(found) == 1 else None
        else:
            match = None
        if match is None:
            break
        if match not in chosen:
            chosen.append(match)
    return chosen


def _read(read: Any) -> Any:
    """One NVML query; None when NVML cannot give it for this device (not supported, no permission)."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - pynvml.NVMLError_NotSupported and its kin
        return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):  # older pynvml returns bytes
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - nothing to do about it
        pass
