"""deploy/k8s/ manifests against the Kubernetes JSON schemas, and their wiring.

The schemas come from the kubernetes-validate package, which ships them for
each Kubernetes release, so nothing is fetched at test time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from bgsvc.auth.addresses import parse_networks
from bgsvc.config import Settings

from .conftest import REPO, WORKER_BUDGET_BYTES, load_yaml_all

K8S = REPO / "deploy" / "k8s"
# Oldest release still commonly run, and the newest the package knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def _docs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_all(path):
            if doc:
                assert isinstance(doc, dict)
                out.append((path, doc))
    return out


DOCS = _docs()
# The service's own objects; redis.yaml's carry app.kubernetes.io/name: redis.
BY_KIND = {
    doc["kind"]: doc
    for _, doc in DOCS
    if doc["metadata"]["labels"]["app.kubernetes.io/name"] == "bgsvc"
}
REDIS = {
    doc["kind"]: doc
    for _, doc in DOCS
    if doc["metadata"]["labels"]["app.kubernetes.io/name"] == "redis"
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[f"{p.name}:{d['kind']}" for p, d in DOCS])
def test_manifest_is_valid_against_the_kubernetes_schema(
    path: Path, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    deployment = BY_KIND["Deployment"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_all_kinds_are_shipped_with_stable_api_versions() -> None:
    assert {kind: doc["apiVersion"] for kind, doc in BY_KIND.items()} == {
        "Deployment": "apps/v1",
        "Service": "v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "PodDisruptionBudget": "policy/v1",
    }
    assert {kind: doc["apiVersion"] for kind, doc in REDIS.items()} == {
        "Service": "v1",
        "StatefulSet": "apps/v1",
        "NetworkPolicy": "networking.k8s.io/v1",
    }


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = BY_KIND["Deployment"]["spec"]["template"]["spec"]
    return pod


def _container() -> dict[str, Any]:
    container: dict[str, Any] = _pod()["containers"][0]
    return container


def test_selectors_of_service_and_pdb_match_the_pod_labels() -> None:
    deployment = BY_KIND["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert BY_KIND["Service"]["spec"]["selector"].items() <= labels.items()
    pdb_selector = BY_KIND["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= labels.items()
    target = BY_KIND["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_service_targets_the_container_port() -> None:
    port = BY_KIND["Service"]["spec"]["ports"][0]
    names = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert names[port["targetPort"]] == 8000


def test_probes_use_ready_for_traffic_and_health_for_liveness() -> None:
    c = _container()
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    # Model load takes up to ~120 s: the startup budget must cover it.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 150


def test_termination_grace_covers_pre_stop_delay_and_drain() -> None:
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    delay = int(pre_stop[1])
    assert delay >= 5
    grace = _pod()["terminationGracePeriodSeconds"]
    assert grace > delay + Settings.model_fields["request_timeout_s"].default


def test_pod_runs_as_non_root_with_metrics_dir_on_an_empty_dir() -> None:
    pod, c = _pod(), _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    # The image sets PROMETHEUS_MULTIPROC_DIR=/tmp/bgsvc-metrics.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/bgsvc-metrics" in dockerfile
    assert mounts["/tmp"] in empty_dirs


def test_resources_are_set_and_threads_fit_the_cpu_limit() -> None:
    c = _container()
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"]
    assert "memory" in c["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    workers, threads = int(env["WEB_CONCURRENCY"]), int(env["BGSVC_INTRA_OP_THREADS"])
    assert workers * threads == int(c["resources"]["limits"]["cpu"])


def test_env_names_are_bgsvc_settings() -> None:
    known = {f"BGSVC_{name.upper()}" for name in Settings.model_fields}
    names = {e["name"] for e in _container()["env"] if e["name"].startswith("BGSVC_")}
    assert names and names <= known, names - known


def test_hpa_scales_on_cpu_from_the_pdb_safe_minimum() -> None:
    hpa = BY_KIND["HorizontalPodAutoscaler"]["spec"]
    metric = hpa["metrics"][0]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    pdb = BY_KIND["PodDisruptionBudget"]["spec"]
    # A drain may take one pod; at least two stay up at the minimum size.
    assert hpa["minReplicas"] - pdb["maxUnavailable"] >= 2


def _env() -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in _container()["env"]}


def test_redis_keeps_every_acknowledged_write_on_a_persistent_volume() -> None:
    statefulset = REDIS["StatefulSet"]["spec"]
    container = statefulset["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[1].split(".")[0] == "7"
    args = container["args"]
    assert dict(zip(args[::2], args[1::2], strict=True)) == {
        "--appendonly": "yes",
        "--appendfsync": "always",
        "--save": "",
    }
    # The AOF lives in /data, on the claim each replica gets from the template (a PVC).
    (claim,) = statefulset["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert statefulset["serviceName"] == REDIS["Service"]["metadata"]["name"]


def test_pods_reach_the_redis_service_and_only_they_may() -> None:
    service = REDIS["Service"]
    pod_labels = REDIS["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port = service["spec"]["ports"][0]
    url = _env()["BGSVC_REDIS_URL"]
    assert url == f"redis://{service['metadata']['name']}:{port['port']}/0"

    policy = REDIS["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    api_labels = BY_KIND["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= api_labels.items()
    # Nothing else in the namespace: the redis pods do not match their own allow rule.
    assert not source["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["port"] for p in rule["ports"]] == [port["targetPort"]]


CACHE = {
    doc["kind"]: doc
    for _, doc in DOCS
    if doc["metadata"]["labels"]["app.kubernetes.io/name"] == "redis-cache"
}


def test_pods_cache_results_in_a_redis_of_their_own_that_evicts_and_only_they_reach() -> None:
    container = CACHE["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags == {
        "--maxmemory": "384mb",
        "--maxmemory-policy": "allkeys-lru",
        "--appendonly": "no",
        "--save": "",
    }
    # The cap leaves room for Redis itself within the container's memory.
    assert container["resources"]["limits"]["memory"] == "512Mi"
    service = CACHE["Service"]
    pod_labels = CACHE["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port = service["spec"]["ports"][0]["port"]
    assert _env()["BGSVC_CACHE_REDIS_URL"] == f"redis://{service['metadata']['name']}:{port}/0"
    (rule,) = CACHE["NetworkPolicy"]["spec"]["ingress"]
    (source,) = rule["from"]
    api_labels = BY_KIND["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= api_labels.items()


def test_job_results_go_to_a_store_every_pod_reads() -> None:
    assert (_env()["BGSVC_STORAGE_URL"] or "").startswith("s3://")
    (source,) = _container()["envFrom"]
    assert source["secretRef"]["optional"] is True


def _scaled_object() -> dict[str, Any]:
    (doc,) = load_yaml_all(K8S / "keda" / "scaledobject.yaml")
    assert isinstance(doc, dict)
    return doc


def test_keda_scales_the_serving_deployment_on_the_job_queue_and_cpu_like_the_hpa() -> None:
    scaled = _scaled_object()
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    deployment = BY_KIND["Deployment"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # It replaces hpa.yaml: the same bounds, behaviour and CPU target.
    hpa = BY_KIND["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert set(triggers) == {"cpu", "redis"}
    cpu = triggers["cpu"]
    assert cpu["metricType"] == "Utilization"
    assert (
        int(cpu["metadata"]["value"])
        == hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    )
    # KEDA reads trigger metadata as strings only.
    queue = triggers["redis"]["metadata"]
    assert all(isinstance(v, str) for t in triggers.values() for v in t["metadata"].values())
    # dramatiq's Redis broker: ready message ids in the list <namespace>:<queue>.
    assert queue["listName"] == "bgsvc:dq:jobs"
    assert int(queue["listLength"]) > 0
    host, _, port = queue["address"].partition(":")
    service = REDIS["Service"]
    assert host.split(".")[0] == service["metadata"]["name"]
    assert host.endswith(".svc.cluster.local"), "KEDA runs in its own namespace"
    assert int(port) == service["spec"]["ports"][0]["port"]


def test_pods_require_api_keys_with_the_pepper_from_a_secret() -> None:
    env = {e["name"]: e for e in _container()["env"]}
    assert env["BGSVC_AUTH"]["value"] == "required"
    ref = env["BGSVC_AUTH_PEPPER"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "bgsvc-auth", "key": "pepper"}  # not optional: no pepper, no pod


def test_pods_take_the_metrics_token_from_a_secret() -> None:
    env = {e["name"]: e for e in _container()["env"]}
    ref = env["BGSVC_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    # Optional: without it /metrics is open but names no key (docs/auth.md).
    assert ref == {"name": "bgsvc-metrics", "key": "token", "optional": True}
    assert "value" not in env["BGSVC_METRICS_TOKEN"], "never the token itself in the manifest"


def test_pods_believe_forwarded_for_from_a_private_network_only() -> None:
    env = {e["name"]: e.get("value") for e in _container()["env"]}
    trusted = parse_networks(env["BGSVC_TRUSTED_PROXIES"])
    assert trusted and all(net.is_private and net.prefixlen >= 8 for net in trusted)


def test_each_worker_has_its_memory_budget_under_the_pod_limit() -> None:
    c = _container()
    resources = c["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", resources["limits"]["memory"]).groups()  # type: ignore[union-attr]
    limit = float(number) * {"Mi": 2**20, "Gi": 2**30}[unit]
    workers = int({e["name"]: e.get("value") for e in c["env"]}["WEB_CONCURRENCY"])
    assert limit >= workers * WORKER_BUDGET_BYTES
