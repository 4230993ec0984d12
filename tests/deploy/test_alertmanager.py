"""The Alertmanager config: amtool's checks, routing, and inhibition in a real Alertmanager."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from benchmarks.nodes import stop_process

from bgsvc.cluster import http_status
from tests.cluster.conftest import free_ports, wait_for

from .conftest import REPO, load_yaml, require_tool

CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    return subprocess.run([amtool, *args], capture_output=True, text=True, timeout=60)


def _alert_names() -> set[str]:
    groups = load_yaml(ALERTS)["groups"]  # type: ignore[index]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def test_config_passes_amtool_check_config() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_check_config_rejects_a_broken_config(tmp_path: Path) -> None:
    # The check above would be worthless if amtool accepted anything.
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: bgsvc-warning", "receiver: nobody"))
    assert _amtool("check-config", str(broken)).returncode != 0


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=BgsvcNodeDown", "severity=critical"], "bgsvc-critical"),
        (["alertname=BgsvcHigh5xxRate", "severity=critical"], "bgsvc-critical"),
        (["alertname=BgsvcFrequentRestarts", "severity=warning"], "bgsvc-warning"),
        (["alertname=BgsvcInferenceWatchdogTripped", "severity=warning"], "bgsvc-warning"),
        (["alertname=BgsvcWebhookFailureRatio", "severity=warning"], "bgsvc-warning"),
        (["alertname=BgsvcJobBacklogOld", "severity=warning"], "bgsvc-warning"),
    ],
)
def test_critical_alerts_go_to_their_own_receiver(labels: list[str], receiver: str) -> None:
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_every_severity_the_rules_use_is_routed_and_every_rule_has_one() -> None:
    groups = load_yaml(ALERTS)["groups"]  # type: ignore[index]
    severities = {rule["labels"]["severity"] for g in groups for rule in g["rules"]}
    assert severities == {"warning", "critical"}


def test_inhibit_rules_name_only_alerts_that_exist() -> None:
    names = _alert_names()
    rules = load_yaml(CONFIG)["inhibit_rules"]  # type: ignore[index]
    assert rules
    for rule in rules:
        assert rule["equal"] == ["instance"]
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname\s*=~?\s*"(?P<names>[^"]+)"', matcher)
            assert match, matcher
            assert set(match["names"].split("|")) <= names, matcher


def test_commented_email_and_slack_examples_are_valid_receivers(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    config: dict[str, Any] = yaml.safe_load(text)
    examples = text.split("# Email instead", 1)[1]
    email, slack = examples.split("# Slack:", 1)

    def uncomment(block: str) -> dict[str, Any]:
        lines = [line[6:] for line in block.splitlines() if line.startswith("  #   ")]
        parsed: dict[str, Any] = yaml.safe_load("\n".join(lines))
        return parsed

    config["receivers"] += [
        {"name": "example-email", **uncomment(email)},
        {"name": "example-slack", **uncomment(slack)},
    ]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = _amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 receivers" in result.stdout


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    # Same routes and inhibitions, but nothing leaves this machine.
    config = CONFIG.read_text().replace("http://alert-receiver.example:5001", "http://127.0.0.1:9")
    (tmp_path / "alertmanager.yml").write_text(config)
    (port,) = free_ports(1)
    command = [
        binary,
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single instance
    ]
    with (tmp_path / "alertmanager.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_status(f"{url}/-/ready") == 200, 30, "alertmanager ready", poll=0.1)
        yield url
    finally:
        stop_process(proc, 10)


def _alert(name: str, instance: str, severity: str) -> dict[str, Any]:
    labels = {"alertname": name, "instance": instance, "job": "bgsvc", "severity": severity}
    return {"labels": labels, "annotations": {"summary": name}}


@pytest.mark.prometheus
def test_a_down_node_suppresses_its_other_alerts_but_not_other_nodes(
    alertmanager: str,
) -> None:
    alerts = [
        _alert("BgsvcNodeDown", "bgsvc-1:8000", "critical"),
        _alert("BgsvcNodeNotReady", "bgsvc-1:8000", "warning"),
        _alert("BgsvcInferenceWatchdogTripped", "bgsvc-1:8000", "warning"),
        _alert("BgsvcFrequentRestarts", "bgsvc-2:8000", "warning"),
        _alert("BgsvcNodeNotReady", "bgsvc-2:8000", "warning"),
        _alert("BgsvcNodeNotReady", "bgsvc-3:8000", "warning"),
    ]
    response = httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=5)
    assert response.status_code == 200, response.text

    def states() -> dict[tuple[str, str], str]:
        body = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        return {
            (a["labels"]["alertname"], a["labels"]["instance"]): a["status"]["state"] for a in body
        }

    expected = {
        ("BgsvcNodeDown", "bgsvc-1:8000"): "active",
        ("BgsvcNodeNotReady", "bgsvc-1:8000"): "suppressed",
        ("BgsvcInferenceWatchdogTripped", "bgsvc-1:8000"): "suppressed",
        # A crash loop explains its own node's readiness only.
        ("BgsvcFrequentRestarts", "bgsvc-2:8000"): "active",
        ("BgsvcNodeNotReady", "bgsvc-2:8000"): "suppressed",
        ("BgsvcNodeNotReady", "bgsvc-3:8000"): "active",
    }
    seen: list[dict[tuple[str, str], str]] = []

    def settled() -> bool:
        seen.append(states())
        return seen[-1] == expected

    try:
        wait_for(settled, 20, "inhibitions to apply", poll=0.2)
    except AssertionError:
        assert seen[-1] == expected  # shows which alert is in the wrong state
