"""docker-compose.yml against the Compose Specification schema, and its host paths.

No Docker engine runs here. The schema is the copy of compose-spec.json that
check-jsonschema ships (check_jsonschema/builtin_schemas/vendor/), so the test
needs no network.
"""

from __future__ import annotations

import ipaddress
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bgsvc.auth.addresses import parse_networks
from bgsvc.config import Settings

from .conftest import REPO, WORKER_BUDGET_BYTES, load_yaml

COMPOSE_FILE = REPO / "docker-compose.yml"
REPLICAS = ["bgsvc-1", "bgsvc-2", "bgsvc-3"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_schema_check_rejects_an_unknown_service_key(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["nginx"]["helthcheck"] = {}
    assert not validator.is_valid(broken)


def _host_paths(compose: dict[str, Any]) -> list[tuple[str, Path]]:
    found = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            found.append((f"{name} build context", context))
            if isinstance(build, dict) and "dockerfile" in build:
                found.append((f"{name} dockerfile", context / build["dockerfile"]))
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            bind = (
                volume.get("type") == "bind"
                if isinstance(volume, dict)
                else (source.startswith((".", "/")))
            )
            if bind:
                found.append((f"{name} volume", (REPO / source).resolve()))
    return found


def test_every_mounted_or_built_host_path_exists_in_the_repo(compose: dict[str, Any]) -> None:
    paths = _host_paths(compose)
    # 3 x (context, dockerfile) + nginx, prometheus x2, alertmanager, grafana x3
    assert len(paths) >= 11
    for what, path in paths:
        assert path.is_relative_to(REPO), f"{what} leaves the repo: {path}"
        assert path.exists(), f"{what}: {path} does not exist"


def test_nginx_waits_for_healthy_replicas_and_replicas_have_healthchecks(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert sorted(s for s in services if s.startswith("bgsvc-")) == REPLICAS
    depends = services["nginx"]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == {
        name: "service_healthy" for name in REPLICAS
    }
    for name in [*REPLICAS, "nginx", "prometheus", "alertmanager"]:
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
    # A replica is healthy when ready for traffic, not merely alive.
    assert any("/ready" in part for part in services["bgsvc-1"]["healthcheck"]["test"])


def test_replicas_drain_before_docker_kills_them(compose: dict[str, Any]) -> None:
    timeout = Settings.model_fields["request_timeout_s"].default
    for name in REPLICAS:
        grace = compose["services"][name]["stop_grace_period"]
        assert int(re.fullmatch(r"(\d+)s", grace)[1]) > timeout  # type: ignore[index]


def test_each_replica_names_itself_and_uses_only_known_settings(compose: dict[str, Any]) -> None:
    known = {f"BGSVC_{name.upper()}" for name in Settings.model_fields}
    for name in REPLICAS:
        env = compose["services"][name]["environment"]
        assert env["BGSVC_NODE_NAME"] == name
        unknown = {k for k in env if k.startswith("BGSVC_")} - known
        assert not unknown, f"{name}: not bgsvc settings: {unknown}"


def test_compose_mounts_the_configs_where_the_images_read_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    prom = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom
    # prometheus.yml names its rule file relative to itself.
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom
    grafana = services["grafana"]["volumes"]
    assert any(v.endswith(":/etc/grafana/provisioning/datasources:ro") for v in grafana)
    assert any(v.endswith(":/etc/grafana/provisioning/dashboards:ro") for v in grafana)


def test_alertmanager_runs_a_pinned_image_with_the_repo_config(compose: dict[str, Any]) -> None:
    service = compose["services"]["alertmanager"]
    image, _, tag = service["image"].partition(":")
    assert image == "prom/alertmanager"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), "pin a release, not latest"
    assert service["restart"] == compose["services"]["prometheus"]["restart"]
    mount = "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
    assert mount in service["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in service["command"]


def test_prometheus_sends_alerts_to_the_compose_alertmanager(compose: dict[str, Any]) -> None:
    config = load_yaml(REPO / "deploy" / "prometheus" / "prometheus.yml")
    targets = [
        target
        for manager in config["alerting"]["alertmanagers"]  # type: ignore[index]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    service = compose["services"]["alertmanager"]
    ports = {p.split(":")[-1] for p in service["ports"]}
    assert targets == [f"alertmanager:{port}" for port in ports]


def test_replicas_store_results_in_the_compose_minio_with_its_credentials(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    minio = services["minio"]
    image, _, tag = minio["image"].partition(":")
    assert image == "minio/minio"
    assert re.fullmatch(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), "pin a release"
    assert minio["healthcheck"]["test"][0] == "CMD"
    assert "minio-data" in compose["volumes"]
    assert any(v.startswith("minio-data:") for v in minio["volumes"])

    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing local/bgsvc" in script
    assert "mc ilm rule add --prefix results/ --expire-days 1 local/bgsvc" in script

    for name in REPLICAS:
        service = services[name]
        env = service["environment"]
        assert env["BGSVC_STORAGE_URL"] == "s3://bgsvc/results"  # the bucket and rule prefix
        assert env["BGSVC_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
        assert service["depends_on"]["minio-init"]["condition"] == (
            "service_completed_successfully"
        )


def test_replicas_queue_jobs_in_the_compose_redis_which_keeps_them_on_a_volume(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    redis = services["redis"]
    image, _, tag = redis["image"].partition(":")
    assert image == "redis" and tag.split(".")[0] == "7", redis["image"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    # Every acknowledged write fsynced to the AOF, which lives on a named volume.
    assert flags == {"--appendonly": "yes", "--appendfsync": "always", "--save": ""}
    assert "redis-data" in compose["volumes"]
    assert "redis-data:/data" in redis["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis, "the queue stays on the compose network"
    for name in REPLICAS:
        service = services[name]
        assert service["environment"]["BGSVC_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_replicas_cache_results_in_a_redis_of_their_own_that_evicts(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    cache = services["redis-cache"]
    command = cache["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    # Bounded, evicting, and nothing on disk: a cache, not a store.
    assert flags == {
        "--maxmemory": "512mb",
        "--maxmemory-policy": "allkeys-lru",
        "--appendonly": "no",
        "--save": "",
    }
    assert "volumes" not in cache and "ports" not in cache
    for name in REPLICAS:
        service = services[name]
        assert service["environment"]["BGSVC_CACHE_REDIS_URL"] == "redis://redis-cache:6379/0"
        assert service["depends_on"]["redis-cache"]["condition"] == "service_started"


def test_replicas_require_api_keys_and_refuse_to_start_without_a_pepper(
    compose: dict[str, Any],
) -> None:
    for name in REPLICAS:
        env = compose["services"][name]["environment"]
        assert env["BGSVC_AUTH"] == "required"
        # ${VAR:?message}: compose itself stops when the pepper is not given.
        assert env["BGSVC_AUTH_PEPPER"].startswith("${BGSVC_AUTH_PEPPER:?")


# Only the balancer faces the network; these serve people who administer the stack.
PUBLIC = {"nginx"}
ADMIN_PAGES = {"prometheus": 9090, "alertmanager": 9093, "grafana": 3000, "minio": 9001}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PEPPER|TOKEN")


def _published(port: str | dict[str, Any]) -> tuple[str, str]:
    """(host ip, container port) of one ports entry; host ip "" when all interfaces."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port["target"])
    parts = str(port).rsplit(":", 2)
    host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
    return host_ip, parts[-1].split("/")[0]


def test_published_port_parsing_sees_all_interfaces_and_loopback() -> None:
    assert _published("9090:9090") == ("", "9090")
    assert _published("127.0.0.1:9090:9090") == ("127.0.0.1", "9090")
    assert _published({"target": 3000, "published": 3000}) == ("", "3000")


def test_every_admin_port_is_published_on_the_hosts_loopback_only(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    published = {
        name: [_published(p) for p in service.get("ports", [])]
        for name, service in services.items()
    }
    for name, container_port in ADMIN_PAGES.items():
        assert ("127.0.0.1", str(container_port)) in published[name], name
    for name, ports in published.items():
        if name not in PUBLIC:
            assert all(host_ip == "127.0.0.1" for host_ip, _ in ports), (name, ports)


def test_no_password_token_or_secret_has_a_default(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    assert "change-me" not in text
    # ${VAR:-default} and ${VAR-default} would start the stack with a known secret.
    assert not re.search(r"\$\{\w*(?:PASSWORD|SECRET|PEPPER|TOKEN)\w*:?-", text)
    checked = 0
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                # ${VAR:?message}: compose stops with the message when VAR is unset or empty.
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), (name, key, value)
                checked += 1
    # The replicas' pepper, token and S3 secret, MinIO's (twice) and Grafana's password.
    assert checked >= 3 * 3 + 3


def test_grafana_asks_everyone_to_log_in(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() != "true"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_replicas_believe_forwarded_for_from_the_compose_nginx_only(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    nginx = ipaddress.ip_address(services["nginx"]["networks"]["default"]["ipv4_address"])
    assert nginx in ipaddress.ip_network(pool["subnet"])
    for name in REPLICAS:
        trusted = parse_networks(services[name]["environment"]["BGSVC_TRUSTED_PROXIES"])
        assert trusted == (ipaddress.ip_network(nginx),), name


def test_each_replica_worker_has_its_memory_budget(compose: dict[str, Any]) -> None:
    for name in REPLICAS:
        service = compose["services"][name]
        number, unit = re.fullmatch(r"(\d+)([mg])", service["mem_limit"]).groups()  # type: ignore[union-attr]
        limit = int(number) * {"m": 2**20, "g": 2**30}[unit]
        workers = int(service["environment"]["WEB_CONCURRENCY"])
        assert limit >= workers * WORKER_BUDGET_BYTES, name
