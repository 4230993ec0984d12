"""Debian's Prometheus scraping a live local cluster: every Grafana dashboard query and
every alert rule of deploy/ works against the metrics the nodes really export."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from benchmarks.nodes import stop_process

from bgsvc.cluster import Cluster, http_status
from tests.cluster.conftest import REMOVE, free_ports, model_env, stream, wait_for
from tests.deploy.grafana_queries import dashboard_queries

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        binary = shutil.which("prometheus")
        assert binary, "prometheus not found: apt-get install -y prometheus"
        (port,) = free_ports(1)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(REPO / "deploy" / "prometheus" / "alerts.yml")],
            "scrape_configs": [{"job_name": "bgsvc", "static_configs": [{"targets": targets}]}],
        }
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        command = [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with (tmp_path / "prometheus.log").open("wb") as log:
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_status(f"{url}/-/ready") == 200, 60, "prometheus ready", poll=0.2)
        return url

    yield start
    for proc in procs:
        stop_process(proc, 30)


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_every_dashboard_query_returns_data_from_a_live_cluster(
    make_cluster: Callable[..., Cluster],
    prometheus: Callable[[list[str]], str],
    cluster_models: dict[str, Path],
    images: list[bytes],
) -> None:
    # Node 3 warms a slow model: heavy requests sent to it meanwhile get 503 (not_ready),
    # which feeds the 5xx and rejection panels with real data.
    slow_start = model_env(cluster_models, "tiny", allow=["tiny", "slowwarm"])
    cluster = make_cluster(node_env={2: slow_start}, wait=False)
    cluster.wait_ready(timeout=90, nodes=cluster.nodes[:2])
    url = prometheus([f"127.0.0.1:{n.port}" for n in cluster.nodes])

    loading = cluster.nodes[2]
    with httpx.Client(timeout=30) as client:
        refused = [
            client.post(f"{loading.url}{REMOVE}", files={"file": ("a.png", images[i])})
            for i in range(3)
        ]
    assert [r.status_code for r in refused] == [503] * 3

    # Traffic over a few scrape intervals, so rate() sees increases between samples.
    sent = 0
    for batch in range(4):
        bodies = images[batch * 20 : (batch + 1) * 20]
        outcomes = stream(f"{cluster.url}{REMOVE}", bodies, total=20, threads=2)
        assert all(o.status == 200 for o in outcomes)
        sent += len(outcomes)
        time.sleep(1.2)
    cluster.wait_ready(timeout=120)
    wait_for(
        lambda: (
            bool(_query(url, 'sum(up{job="bgsvc"}) == 3'))
            and bool(_query(url, f'sum(bgsvc_http_requests_total{{route="{REMOVE}"}}) >= {sent}'))
            and bool(_query(url, "sum(bgsvc_ready) == 3"))
            # rate() needs two samples of a series in its window: a node whose scrapes
            # timed out while it was busy starting may have been sampled once so far.
            and bool(_query(url, f'sum(rate(bgsvc_http_requests_total{{route="{REMOVE}"}}[1m]))'))
            and bool(_query(url, "sum(rate(bgsvc_input_megapixels_bucket[1m]))"))
        ),
        60,
        "prometheus to scrape the traffic",
        poll=0.5,
    )

    # This cluster runs no jobs, sends no webhooks and has no Redis: the Jobs row's
    # queries must run (_query checks), but their series appear only with that traffic.
    queries = dashboard_queries()
    empty = [
        f"{q.panel} [{q.ref_id}]: {q.expr}"
        for q in queries
        if not _query(url, q.expr) and q.row != "Jobs"
    ]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)

    # The alert rules load and evaluate without errors against real series.
    def rules_evaluated() -> bool:
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return bool(rules) and all(r.get("lastEvaluation", "").startswith("2") for r in rules)

    wait_for(rules_evaluated, 30, "alert rules evaluated", poll=0.5)
    groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 4
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
