"""GPU memory and utilisation through NVML, read at scrape time.

Only a process whose model runs on an NVIDIA provider builds a :class:`GpuCollector`;
``pynvml`` (the ``nvidia-ml-py`` package, in the ``gpu`` extra) is imported on the first
scrape, so a CPU node never loads NVML and exports no GPU series at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

LABELS = ("gpu", "uuid", "name")


def _text(value: Any) -> str:
    # Older NVML bindings return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """Memory used and total (bytes) and utilisation (0-1) of every GPU NVML sees, by
    index, UUID and product name. A failing NVML (driver gone, library missing) yields no
    GPU series and is logged once per outage; the rest of the scrape is unaffected."""

    def __init__(self) -> None:
        self._nvml: ModuleType | None = None
        self._failing = False

    def _init(self) -> ModuleType:
        if self._nvml is None:
            import pynvml

            # nvmlInit is reference-counted and cheap once done: once per process.
            pynvml.nvmlInit()
            self._nvml = pynvml
        return self._nvml

    def _read(self) -> list[tuple[tuple[str, str, str], int, int, float]]:
        nvml = self._init()
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            labels = (
                str(index),
                _text(nvml.nvmlDeviceGetUUID(handle)),
                _text(nvml.nvmlDeviceGetName(handle)),
            )
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            devices.append((labels, int(memory.used), int(memory.total), float(busy)))
        return devices

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            devices = self._read()
        except Exception as exc:  # NVMLError, or no NVML library / binding at all
            if not self._failing:
                hint = " (pip install 'bgsvc[gpu]')" if isinstance(exc, ImportError) else ""
                log.warning("GPU metrics unavailable (NVML: %s)%s; exporting none", exc, hint)
            self._failing = True
            self._nvml = None  # a restarted driver needs a fresh nvmlInit
            return
        if self._failing:
            log.info("GPU metrics available again")
            self._failing = False
        used = GaugeMetricFamily(
            "bgsvc_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=LABELS
        )
        total = GaugeMetricFamily(
            "bgsvc_gpu_memory_total_bytes", "GPU memory installed.", labels=LABELS
        )
        busy = GaugeMetricFamily(
            "bgsvc_gpu_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran on the GPU (0-1).",
            labels=LABELS,
        )
        for labels, used_bytes, total_bytes, ratio in devices:
            used.add_metric(labels, used_bytes)
            total.add_metric(labels, total_bytes)
            busy.add_metric(labels, ratio)
        yield used
        yield total
        yield busy
