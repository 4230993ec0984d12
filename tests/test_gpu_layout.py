"""The CUDA host layout (workers, concurrency, device per worker slot, memory share) with a
fake NVML: there is no GPU on the development machines."""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bgsvc import gpu_layout
from bgsvc.config import Settings, get_settings
from bgsvc.gpu_layout import GpuHost
from tests.test_gpu_metrics import GIB, FakeNvml

REPO = Path(__file__).resolve().parents[1]
# The fake's two devices: an 80 GiB H100 and a 24 GiB L4.
SMALLEST = 24 * GIB


class Nvml(FakeNvml):
    def __init__(self) -> None:
        super().__init__()
        self.shutdowns = 0

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Nvml:
    fake = Nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.fixture
def gpu_wheel(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    def installed(yes: bool) -> None:
        monkeypatch.setattr(gpu_layout, "_gpu_wheel_installed", lambda: yes)

    return installed


def test_a_host_without_the_gpu_wheel_keeps_the_cpu_defaults(
    nvml: Nvml, gpu_wheel: Callable[[bool], None]
) -> None:
    gpu_wheel(False)
    settings = Settings()
    host = gpu_layout.probe(settings)
    assert host is None
    assert gpu_layout.worker_count(settings, host) == 1
    assert gpu_layout.max_concurrency(settings, on_cuda=False) == 1
    assert nvml.inits == 0  # NVML is not even asked


def test_provider_cpu_is_a_cpu_host_even_with_gpus_present(
    nvml: Nvml, gpu_wheel: Callable[[bool], None]
) -> None:
    gpu_wheel(True)
    assert gpu_layout.probe(Settings(provider="cpu")) is None


def test_auto_with_the_gpu_wheel_and_no_usable_nvml_is_a_cpu_host(
    nvml: Nvml, gpu_wheel: Callable[[bool], None]
) -> None:
    gpu_wheel(True)
    nvml.fail = True
    assert gpu_layout.probe(Settings()) is None


def test_cuda_host_gets_two_workers_per_gpu_each_running_four_inferences(
    nvml: Nvml, gpu_wheel: Callable[[bool], None]
) -> None:
    gpu_wheel(True)
    settings = Settings()
    host = gpu_layout.probe(settings)
    assert host == GpuHost(devices=(0, 1), memory_bytes=SMALLEST)
    assert gpu_layout.worker_count(settings, host) == 4
    assert gpu_layout.max_concurrency(settings, on_cuda=True) == 4
    assert nvml.shutdowns == 1  # the arbiter keeps no NVML state into its forks


def test_explicit_workers_and_concurrency_win_over_the_cuda_defaults(
    nvml: Nvml, gpu_wheel: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_wheel(True)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("BGSVC_MAX_CONCURRENCY", "2")
    settings = Settings()
    assert gpu_layout.worker_count(settings, gpu_layout.probe(settings)) == 3
    assert gpu_layout.max_concurrency(settings, on_cuda=True) == 2


def test_gpu_devices_and_cuda_visible_devices_choose_the_gpus(
    nvml: Nvml, gpu_wheel: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_wheel(True)
    host = gpu_layout.probe(Settings(gpu_devices=" 1 ,"))
    assert host is not None and host.devices == (1,)
    # CUDA numbers the devices it is shown from 0, whatever NVML counts.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0a1b")
    host = gpu_layout.probe(Settings())
    assert host is not None and host.devices == (0,)


def test_provider_cuda_without_nvml_trusts_the_device_setting(
    nvml: Nvml, gpu_wheel: Callable[[bool], None]
) -> None:
    gpu_wheel(False)
    nvml.fail = True
    host = gpu_layout.probe(Settings(provider="cuda", cuda_device_id=3))
    assert host == GpuHost(devices=(3,), memory_bytes=0)
    assert gpu_layout.memory_limit(Settings(), host, workers=2) == 0  # size unknown


def test_worker_slot_i_runs_on_device_i_mod_n() -> None:
    host = GpuHost(devices=(2, 5, 7))
    assert [gpu_layout.device_for(slot, host) for slot in range(7)] == [2, 5, 7, 2, 5, 7, 2]


def test_lowest_free_slot_fills_the_gap_a_dead_worker_left() -> None:
    assert gpu_layout.lowest_free_slot([]) == 0
    assert gpu_layout.lowest_free_slot([0, 1, 2]) == 3
    assert gpu_layout.lowest_free_slot([0, 2, 3]) == 1


def test_workers_sharing_a_gpu_split_its_memory_and_a_gpu_of_its_own_is_unlimited() -> None:
    host = GpuHost(devices=(0, 1), memory_bytes=SMALLEST)
    shared = gpu_layout.memory_limit(Settings(), host, workers=4)
    assert shared == int(SMALLEST * gpu_layout.SHARED_MEMORY_FRACTION) // 2
    assert gpu_layout.memory_limit(Settings(), host, workers=2) == 0
    # An odd count: the busiest GPU has two workers, and both get the same share.
    assert gpu_layout.memory_limit(Settings(), host, workers=3) == shared
    explicit = Settings(cuda_mem_limit_bytes=GIB)
    assert gpu_layout.memory_limit(explicit, host, workers=4) == GIB


@pytest.fixture
def restore_environ() -> Iterator[None]:
    saved = dict(os.environ)
    get_settings.cache_clear()
    yield
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


class Arbiter:
    """What gunicorn's arbiter does around the two hooks: pre_fork, fork, WORKERS[pid]; the
    child runs post_fork. The child's environment is captured instead of forking."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.WORKERS: dict[int, SimpleNamespace] = {}
        self.log = SimpleNamespace(info=lambda *a: None)
        self.pids = iter(range(100, 200))
        self.children: dict[int, dict[str, str]] = {}

    def spawn(self) -> int:
        worker = SimpleNamespace()
        self.conf["pre_fork"](self, worker)
        pid = next(self.pids)
        self.WORKERS[pid] = worker
        before = dict(os.environ)
        self.conf["post_fork"](self, worker)
        self.children[pid] = {
            k: v for k, v in os.environ.items() if k.startswith("BGSVC_") and before.get(k) != v
        }
        self.children[pid]["settings_device"] = str(get_settings().cuda_device_id)
        os.environ.clear()
        os.environ.update(before)
        get_settings.cache_clear()
        return pid


def test_gunicorn_gives_a_replacement_worker_the_slot_and_gpu_of_the_one_it_replaces(
    nvml: Nvml, gpu_wheel: Callable[[bool], None], restore_environ: None
) -> None:
    gpu_wheel(True)
    conf = runpy.run_path(str(REPO / "deploy" / "gunicorn.conf.py"))
    assert conf["workers"] == 4
    arbiter = Arbiter(conf)
    pids = [arbiter.spawn() for _ in range(conf["workers"])]
    devices = [arbiter.children[pid]["BGSVC_CUDA_DEVICE_ID"] for pid in pids]
    assert devices == ["0", "1", "0", "1"]
    # The worker's own settings see its device (the arbiter's cached copy was dropped).
    assert [arbiter.children[pid]["settings_device"] for pid in pids] == devices
    share = str(int(SMALLEST * gpu_layout.SHARED_MEMORY_FRACTION) // 2)
    assert {arbiter.children[pid]["BGSVC_CUDA_MEM_LIMIT_BYTES"] for pid in pids} == {share}
    assert {arbiter.children[pid]["BGSVC_WORKERS"] for pid in pids} == {"4"}

    dead = pids[1]
    slot = arbiter.WORKERS.pop(dead).bgsvc_slot
    replacement = arbiter.spawn()
    assert arbiter.WORKERS[replacement].bgsvc_slot == slot == 1
    assert arbiter.children[replacement]["BGSVC_CUDA_DEVICE_ID"] == "1"
    assert sorted(w.bgsvc_slot for w in arbiter.WORKERS.values()) == [0, 1, 2, 3]


def test_gunicorn_on_a_cpu_host_leaves_the_worker_environment_alone(
    nvml: Nvml, gpu_wheel: Callable[[bool], None], restore_environ: None
) -> None:
    gpu_wheel(False)
    conf = runpy.run_path(str(REPO / "deploy" / "gunicorn.conf.py"))
    assert conf["workers"] == 1
    arbiter = Arbiter(conf)
    pid = arbiter.spawn()
    assert arbiter.children[pid] == {"settings_device": "0"}
    assert arbiter.WORKERS[pid].bgsvc_slot == 0


def test_app_runs_one_inference_at_a_time_on_the_cpu_by_default(
    make_settings: Callable[..., Settings],
) -> None:
    from bgsvc.app import create_app

    app = create_app(make_settings(), on_load_failure=lambda: None)
    assert app.state.bgsvc.scheduler.max_concurrency == 1
    app = create_app(make_settings(max_concurrency=3), on_load_failure=lambda: None)
    assert app.state.bgsvc.scheduler.max_concurrency == 3


def test_app_runs_four_inferences_at_once_on_a_cuda_host(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgsvc.app import create_app

    monkeypatch.setattr(gpu_layout, "probe", lambda settings: GpuHost(devices=(0,)))
    app = create_app(make_settings(), on_load_failure=lambda: None)
    assert app.state.bgsvc.scheduler.max_concurrency == gpu_layout.CUDA_MAX_CONCURRENCY == 4
