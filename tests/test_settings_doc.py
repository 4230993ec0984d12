"""docs/settings.md is rendered from the settings' fields and must match them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgsvc.cli import main
from bgsvc.config import Settings, get_settings
from bgsvc.settings_reference import (
    REFERENCE_COMMAND,
    REFERENCE_PATH,
    env_names,
    section_of,
    settings_markdown,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_settings_reference_is_current() -> None:
    path = ROOT / REFERENCE_PATH
    written = path.read_text() if path.exists() else ""
    if written != settings_markdown():
        pytest.fail(
            f"{REFERENCE_PATH} does not match src/bgsvc/config/; regenerate it from the "
            f"repository root with: PYTHONPATH=src python -m {REFERENCE_COMMAND}",
            pytrace=False,
        )


def test_every_setting_has_a_section_and_a_description() -> None:
    missing = [
        name
        for name, field in Settings.model_fields.items()
        if not section_of(field) or not (field.description or "").strip()
    ]
    assert missing == []


def test_every_variable_appears_once() -> None:
    doc = settings_markdown()
    for name, field in Settings.model_fields.items():
        for env in env_names(name, field):
            assert doc.count(f"| `{env}`") + doc.count(f", `{env}`") == 1, env


def test_standard_names_are_listed_as_read() -> None:
    fields = Settings.model_fields
    assert env_names("otel_service_name", fields["otel_service_name"]) == ["OTEL_SERVICE_NAME"]
    assert env_names("workers", fields["workers"]) == ["BGSVC_WORKERS", "WEB_CONCURRENCY"]
    assert env_names("max_queue", fields["max_queue"]) == ["BGSVC_MAX_QUEUE"]


def test_the_reference_does_not_depend_on_the_home_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = settings_markdown()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings_markdown() == before
    assert "`~/.cache/bgsvc/models`" in before


def test_the_cli_prints_the_reference_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Invalid here (required without a pepper), yet irrelevant to the reference.
    monkeypatch.setenv("BGSVC_AUTH", "required")
    assert main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == settings_markdown()


def test_the_cli_prints_the_values_in_effect(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BGSVC_MAX_QUEUE", "9")
    monkeypatch.setenv("BGSVC_METRICS_TOKEN", "s" * 20)
    get_settings.cache_clear()
    try:
        assert main(["settings"]) == 0
    finally:
        get_settings.cache_clear()
    lines = capsys.readouterr().out.splitlines()
    assert "BGSVC_MAX_QUEUE=9" in lines
    assert "BGSVC_WARMUP=true" in lines
    assert "BGSVC_ALLOWED_FORMATS=" + '["JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF"]' in lines
    assert "BGSVC_METRICS_TOKEN=**********" in lines
    assert len(lines) == len(Settings.model_fields)
