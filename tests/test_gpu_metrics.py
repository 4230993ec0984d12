"""GPU metrics through NVML, with a fake ``pynvml`` (no GPU on the development machines)."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bgsvc.config import Settings
from bgsvc.gpu_metrics import GpuCollector
from bgsvc.inference.loader import load_engines
from bgsvc.inference.providers import CPU, CUDA, TENSORRT
from bgsvc.metrics import Metrics
from bgsvc.pipeline import Predictor

GIB = 1024**3
DEVICES = [
    # (uuid, name, used, total, utilisation %)
    ("GPU-0a1b", b"NVIDIA H100 80GB HBM3", 3 * GIB, 80 * GIB, 37),
    ("GPU-9f8e", "NVIDIA L4", GIB // 2, 24 * GIB, 0),
]


class FakeNvml(types.ModuleType):
    """The slice of pynvml the collector uses, over two devices; ``fail`` breaks it."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.inits = 0
        self.reads = 0
        self.fail = False

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        self.reads += 1
        if self.fail:
            raise self.NVMLError("Driver Not Loaded")
        return len(DEVICES)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return DEVICES[handle][0]

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return DEVICES[handle][1]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        _, _, used, total, _ = DEVICES[handle]
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=DEVICES[handle][4], memory=0)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def gpu_samples(text: str) -> dict[tuple[str, str, str, str], float]:
    """{(metric, gpu, uuid, name): value} of every bgsvc_gpu_* sample."""
    return {
        (s.name, s.labels["gpu"], s.labels["uuid"], s.labels["name"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("bgsvc_gpu_")
        for s in family.samples
    }


EXPECTED = {
    ("bgsvc_gpu_memory_used_bytes", "0", "GPU-0a1b", "NVIDIA H100 80GB HBM3"): 3 * GIB,
    ("bgsvc_gpu_memory_total_bytes", "0", "GPU-0a1b", "NVIDIA H100 80GB HBM3"): 80 * GIB,
    ("bgsvc_gpu_utilization_ratio", "0", "GPU-0a1b", "NVIDIA H100 80GB HBM3"): 0.37,
    ("bgsvc_gpu_memory_used_bytes", "1", "GPU-9f8e", "NVIDIA L4"): GIB // 2,
    ("bgsvc_gpu_memory_total_bytes", "1", "GPU-9f8e", "NVIDIA L4"): 24 * GIB,
    ("bgsvc_gpu_utilization_ratio", "1", "GPU-9f8e", "NVIDIA L4"): 0.0,
}


def on_provider(first: str) -> Callable[[Settings], dict[str, Predictor]]:
    """The tiny model, reporting ``first`` as the provider ORT chose (it still runs on the
    CPU: only the choice matters to the metrics)."""

    def loader(settings: Settings) -> dict[str, Predictor]:
        engines = load_engines(settings)
        for engine in engines.values():
            engine.providers = [first, CPU]
        return dict(engines)

    return loader


def test_collector_exports_memory_and_utilisation_per_device(nvml: FakeNvml) -> None:
    metrics = Metrics()
    metrics.add_collector(GpuCollector())
    body, _ = metrics.render()
    assert gpu_samples(body.decode()) == pytest.approx(EXPECTED)
    assert nvml.inits == 1


@pytest.mark.parametrize("provider", [CUDA, TENSORRT])
def test_a_node_on_an_nvidia_provider_exports_gpu_series(
    nvml: FakeNvml, make_client: Callable[..., TestClient], provider: str
) -> None:
    client = make_client(loader=on_provider(provider))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert gpu_samples(response.text) == pytest.approx(EXPECTED)
    # Read at scrape time: a second scrape reads NVML again, without a second init.
    client.get("/metrics")
    assert (nvml.inits, nvml.reads) == (1, 2)


def test_a_cpu_node_has_no_gpu_series_and_never_imports_nvml(
    monkeypatch: pytest.MonkeyPatch, make_client: Callable[..., TestClient]
) -> None:
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    client = make_client()  # the real loader: this machine's onnxruntime has only the CPU
    text = client.get("/metrics").text
    assert "bgsvc_ready 1.0" in text
    assert "bgsvc_gpu_" not in text
    assert "pynvml" not in sys.modules


def test_an_nvml_failure_leaves_the_scrape_intact_and_is_logged_once(
    nvml: FakeNvml, make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(loader=on_provider(CUDA))
    assert gpu_samples(client.get("/metrics").text) == pytest.approx(EXPECTED)
    nvml.fail = True
    with caplog.at_level(logging.WARNING, logger="bgsvc.gpu_metrics"):
        first = client.get("/metrics")
        second = client.get("/metrics")
    for response in (first, second):
        assert response.status_code == 200
        assert "bgsvc_ready 1.0" in response.text
        assert "bgsvc_gpu_" not in response.text
    assert [r.getMessage() for r in caplog.records if r.name == "bgsvc.gpu_metrics"] == [
        "GPU metrics unavailable (NVML: Driver Not Loaded); exporting none"
    ]
    # The driver comes back: the series return, through a fresh nvmlInit.
    nvml.fail = False
    assert gpu_samples(client.get("/metrics").text) == pytest.approx(EXPECTED)
    assert nvml.inits > 1


def test_a_missing_nvml_binding_yields_no_series_and_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # None in sys.modules makes `import pynvml` raise ImportError.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    metrics = Metrics()
    metrics.add_collector(GpuCollector())
    with caplog.at_level(logging.WARNING, logger="bgsvc.gpu_metrics"):
        body, _ = metrics.render()
    assert b"bgsvc_gpu_" not in body
    assert "bgsvc[gpu]" in caplog.text


def test_multiprocess_scrape_reads_the_gpu_once(nvml: FakeNvml, tmp_path: Path) -> None:
    metrics = Metrics(multiproc_dir=tmp_path)
    metrics.add_collector(GpuCollector())
    body, _ = metrics.render()
    text = body.decode()
    assert gpu_samples(text) == pytest.approx(EXPECTED)
    assert text.count("# TYPE bgsvc_gpu_memory_used_bytes gauge") == 1
    assert nvml.reads == 1
