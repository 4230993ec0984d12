"""Prometheus config, alert rules and the Grafana dashboard, checked with promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bgsvc.metrics import Metrics

from .conftest import REPO, load_yaml, require_tool
from .grafana_queries import DASHBOARD, dashboard_queries, iter_panels, load_dashboard

PROM = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
ALERTS_DOC = REPO / "docs" / "alerts.md"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool", "prometheus")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def _bgsvc_job() -> dict[str, Any]:
    config = load_yaml(PROM / "prometheus.yml")
    job: dict[str, Any] = next(j for j in config["scrape_configs"] if j["job_name"] == "bgsvc")  # type: ignore[index]
    return job


def test_scrape_config_and_rule_files_pass_promtool_check_config(tmp_path: Path) -> None:
    # promtool also checks that the token file exists, as Compose will have mounted it
    # next to the config: the folder is checked in a copy with a token in its place.
    shutil.copytree(PROM, tmp_path, dirs_exist_ok=True)
    token_file = _bgsvc_job()["authorization"]["credentials_file"]
    (tmp_path / token_file).write_text("scrape-token-0123456789abcdef\n")
    result = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule file is found and checked as part of the config.
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_the_nodes_with_the_token_compose_gives_both() -> None:
    auth = _bgsvc_job()["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    compose = load_yaml(REPO / "docker-compose.yml")
    services = compose["services"]  # type: ignore[index]
    # Relative to prometheus.yml, which Compose mounts in /etc/prometheus.
    (secret,) = services["prometheus"]["secrets"]
    assert secret["target"] == f"/etc/prometheus/{auth['credentials_file']}"
    source = compose["secrets"][secret["source"]]  # type: ignore[index]
    assert source == {"environment": "BGSVC_METRICS_TOKEN"}
    for name in ("bgsvc-1", "bgsvc-2", "bgsvc-3"):
        token = services[name]["environment"]["BGSVC_METRICS_TOKEN"]
        # ${VAR:?message}: compose refuses to start without it.
        assert token.startswith("${BGSVC_METRICS_TOKEN:?"), name


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(PROM / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_and_stay_quiet_as_their_unit_tests_expect() -> None:
    result = _promtool("test", "rules", str(REPO / "tests/deploy/prometheus/alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_cover_latency_errors_node_down_rejections_restarts_watchdog_jobs_and_cache() -> (
    None
):
    rules = {
        rule["alert"]: rule
        for group in load_yaml(PROM / "alerts.yml")["groups"]  # type: ignore[index]
        for rule in group["rules"]
    }
    assert "> 1.5" in rules["BgsvcHighLatencyP95"]["expr"]
    assert "histogram_quantile(0.95" in rules["BgsvcHighLatencyP95"]["expr"]
    assert "> 0.01" in rules["BgsvcHigh5xxRate"]["expr"]
    assert rules["BgsvcNodeDown"]["expr"].strip() == 'up{job="bgsvc"} == 0'
    assert "bgsvc_rejections_total" in rules["BgsvcSustainedRejections"]["expr"]
    assert "bgsvc_process_start_time_seconds" in rules["BgsvcFrequentRestarts"]["expr"]
    assert "bgsvc_watchdog_trips_total" in rules["BgsvcInferenceWatchdogTripped"]["expr"]
    assert "bgsvc_job_oldest_queued_age_seconds" in rules["BgsvcJobBacklogOld"]["expr"]
    assert "> 300" in rules["BgsvcJobBacklogOld"]["expr"]
    webhooks = rules["BgsvcWebhookFailureRatio"]["expr"]
    assert "bgsvc_webhook_deliveries_total" in webhooks and "> 0.2" in webhooks
    assert 'level="redis"' in rules["BgsvcSharedCacheErrors"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]

    for name in ("BgsvcJobBacklogOld", "BgsvcWebhookFailureRatio", "BgsvcSharedCacheErrors"):
        anchor = rules[name]["annotations"]["runbook_url"].split("#", 1)[1]
        assert f"## {name}" in ALERTS_DOC.read_text() and anchor == name.lower()


def test_every_compose_replica_is_scraped() -> None:
    config = load_yaml(PROM / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "bgsvc")  # type: ignore[index]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    compose = load_yaml(REPO / "docker-compose.yml")
    replicas = sorted(s for s in compose["services"] if re.fullmatch(r"bgsvc-\d+", s))  # type: ignore[index]
    assert len(replicas) == 3
    assert sorted(targets) == [f"{name}:8000" for name in replicas]


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.expr}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_query_check_rejects_broken_promql(tmp_path: Path) -> None:
    # The check above would be worthless if promtool accepted anything.
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": "sum(rate(x[1m])"}]}]}
        )
    )
    assert _promtool("check", "rules", str(path)).returncode != 0


def test_dashboard_has_a_panel_for_each_required_signal() -> None:
    exprs = " ".join(q.expr for q in dashboard_queries())
    for needle in (
        "rate(bgsvc_http_requests_total",  # RPS
        'status=~"5.."',  # error rate
        "histogram_quantile(0.5, sum by (le) (rate(bgsvc_http_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(bgsvc_http_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(bgsvc_http_request_duration_seconds_bucket",
        "bgsvc_inference_duration_seconds_bucket",
        "bgsvc_queued_requests",
        "bgsvc_inflight_inferences",
        "bgsvc_rejections_total",
        "sum by (instance) (rate(bgsvc_http_requests_total",  # per node
        "changes(bgsvc_process_start_time_seconds",  # restarts
    ):
        assert needle in exprs, needle


def test_dashboard_has_a_jobs_row_with_jobs_webhook_and_cache_panels() -> None:
    panels = list(iter_panels(load_dashboard()))
    rows = [p for p in panels if p["type"] == "row"]
    jobs_row = next(p for p in rows if p["title"] == "Jobs")
    below = [p for p in panels if p["gridPos"]["y"] > jobs_row["gridPos"]["y"]]
    exprs = " ".join(t["expr"] for p in below for t in p["targets"])
    for needle in (
        "sum by (outcome) (rate(bgsvc_jobs_total",
        "bgsvc_job_queue_depth",
        "bgsvc_job_oldest_queued_age_seconds",
        "histogram_quantile(0.5, sum by (le, outcome) (rate(bgsvc_job_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, outcome) (rate(bgsvc_job_duration_seconds_bucket",
        "sum by (event, outcome) (rate(bgsvc_webhook_deliveries_total",
        'sum by (level) (rate(bgsvc_result_cache_level_lookups_total{result="hit"',
        "sum by (level) (rate(bgsvc_cache_errors_total",
    ):
        assert needle in exprs, needle


def _exported_names() -> set[str]:
    """Every series name the service's registry can export (GPU metrics, read through NVML
    by a collector, are absent on a CPU and named by hand)."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
    }
    names = {
        "bgsvc_gpu_memory_used_bytes",
        "bgsvc_gpu_memory_total_bytes",
        "bgsvc_gpu_utilization_ratio",
    }
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_every_metric_the_dashboard_and_the_alerts_name_is_one_the_service_exports() -> None:
    exported = _exported_names()
    rules = [
        rule["expr"]
        for group in load_yaml(PROM / "alerts.yml")["groups"]  # type: ignore[index]
        for rule in group["rules"]
    ]
    used = {
        name
        for expr in [q.expr for q in dashboard_queries()] + rules
        for name in re.findall(r"\bbgsvc_\w+", expr)
    }
    assert "bgsvc_webhook_deliveries_total" in used
    assert sorted(used - exported) == []


def test_dashboard_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    datasource = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]  # type: ignore[index]
    dashboard = load_dashboard()
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert all(t["datasource"]["uid"] == uid for t in panel["targets"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_dashboard_provider_points_at_the_folder_compose_mounts() -> None:
    provider = load_yaml(GRAFANA / "provisioning/dashboards/bgsvc.yml")["providers"][0]  # type: ignore[index]
    compose = load_yaml(REPO / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]  # type: ignore[index]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert json.loads(DASHBOARD.read_text())["uid"]
