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
