from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bgsvc.config import Settings


def test_settings_read_the_bgsvc_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGSVC_MAX_QUEUE", "9")
    monkeypatch.setenv("BGSVC_ALLOWED_FORMATS", '["png", "jpeg"]')
    monkeypatch.setenv("MAX_QUEUE", "1")
    settings = Settings()
    assert settings.max_queue == 9
    assert settings.allowed_formats == ["PNG", "JPEG"]


def test_defaults_match_the_documented_limits() -> None:
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.max_upload_bytes == 25 * 1024 * 1024
    assert s.max_pixels == 25_000_000 and s.max_edge == 2048
    # 0: provider-dependent (1 on the CPU, 4 on CUDA; tests/test_gpu_layout.py).
    assert s.max_concurrency == 0 and s.provider == "auto"
    assert s.model_dir == Path.home() / ".cache" / "bgsvc" / "models"


def test_default_model_is_always_allowed() -> None:
    assert Settings(default_model="u2net", models=["silueta"]).models == ["u2net", "silueta"]


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError):
        Settings(max_concurrency=-1)
    with pytest.raises(ValueError):
        Settings(gpu_devices="0,gpu1")
    with pytest.raises(ValueError):
        Settings(provider="tpu")  # type: ignore[arg-type]


def test_cache_ttl_jitter_must_stay_below_the_ttl() -> None:
    with pytest.raises(ValidationError):
        Settings(cache_ttl_s=60, cache_ttl_jitter_s=60)
    assert Settings(cache_ttl_s=60, cache_ttl_jitter_s=59).cache_ttl_jitter_s == 59


def test_an_empty_directory_setting_means_unset_not_the_current_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OPENVINO_CACHE_DIR", "TENSORRT_CACHE_DIR", "INT8_CALIBRATION_DIR"):
        monkeypatch.setenv(f"BGSVC_{name}", "")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    settings = Settings()
    assert settings.openvino_cache_dir is None
    assert settings.tensorrt_cache_dir is None
    assert settings.int8_calibration_dir is None
    assert settings.prometheus_multiproc_dir is None


def test_only_the_documented_names_set_the_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGSVC_WORKERS", raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setenv("WORKERS", "7")
    assert Settings().workers == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Settings().workers == 3
    assert Settings(workers=2).workers == 2
