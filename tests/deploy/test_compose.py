"""docker-compose.yml and the monitoring it brings up: Debian's docker-compose (1.29,
which knows profiles and GPU device reservations) validates every profile; the services'
commands, settings and scrape targets are checked against the real CLI, Settings and app."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    REPO,
    compose_file,
    metric_sample_names,
    parse_cli,
    parse_dockerfile,
    require_tool,
    run_tool,
    served_get_paths,
    settings_env_names,
)

DEPLOY = REPO / "deploy"


def compose_profiles() -> list[str | None]:
    services = compose_file()["services"].values()
    return [None, *sorted({p for s in services for p in s.get("profiles", [])})]


def in_image(path: str) -> Path:
    """Where a path under /models of a service's image comes from in this repo."""
    assert path.startswith("/models/"), f"{path} is not in the image's model repository"
    return REPO / "models" / path.removeprefix("/models/")


def service_argv(service: dict[str, Any]) -> list[str]:
    """The command a service runs: its entrypoint/command, else its image's."""
    dockerfile = parse_dockerfile(REPO / service["build"]["dockerfile"])
    final = dockerfile.stages[-1]
    entrypoint = service.get("entrypoint") or dockerfile.effective(final, "ENTRYPOINT").exec_form()
    command = service.get("command") or dockerfile.effective(final, "CMD").exec_form()
    return [*entrypoint, *command]


@pytest.mark.parametrize("profile", compose_profiles(), ids=lambda p: p or "default")
def test_docker_compose_accepts_the_file_in_every_profile(profile: str | None) -> None:
    compose = require_tool("docker-compose")
    selector = ["--profile", profile] if profile else []
    result = run_tool([compose, "-f", "docker-compose.yml", *selector, "config", "-q"])
    assert result.returncode == 0, result.stderr


def test_docker_compose_rejects_a_misspelt_gpu_reservation(tmp_path: Path) -> None:
    """The validation above is real: a wrong key under the GPU reservation fails it."""
    compose = require_tool("docker-compose")
    broken = (REPO / "docker-compose.yml").read_text().replace("capabilities:", "capabilitys:")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = run_tool([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=tmp_path)
    assert result.returncode != 0
    assert "capabilitys" in result.stderr


def test_api_reserves_a_gpu_and_the_profiles_hold_cpu_and_batch_services() -> None:
    services = compose_file()["services"]
    devices = services["api"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "profiles" not in services["api"], "`docker compose up` must start the GPU service"
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert services["api-cpu"]["profiles"] == ["cpu"]
    assert services["api-cpu"]["build"]["dockerfile"] == "Dockerfile"
    assert "deploy" not in services["api-cpu"]
    assert services["score"]["profiles"] == ["batch"]
    for name in ("api", "api-cpu", "score"):
        assert (REPO / services[name]["build"]["dockerfile"]).is_file()


def test_services_run_real_cli_commands() -> None:
    services = compose_file()["services"]
    serve = parse_cli(service_argv(services["api"])[1:])
    assert serve.command == "serve" and serve.host == "0.0.0.0"
    assert parse_cli(service_argv(services["api-cpu"])[1:]).command == "serve"
    argv = service_argv(services["score"])
    assert argv[0] == "mplstm"
    score = parse_cli(argv[1:])
    assert score.command == "score" and score.resume
    # The output goes to the named volume, not into the read-only image.
    assert any(v.split(":")[1] == "/scores" for v in services["score"]["volumes"])
    assert str(score.out).startswith("/scores/")


def test_score_service_reads_a_manifest_and_package_the_image_holds() -> None:
    from mplstm.core.package import resolve_package

    score = parse_cli(service_argv(compose_file()["services"]["score"])[1:])
    assert in_image(str(score.manifest)).is_file()
    # The demo package the images bake in from models/ (`make demo-models`).
    resolve_package(in_image(str(score.model)))


def test_api_services_publish_the_http_and_grpc_ports_they_serve_on() -> None:
    services = compose_file()["services"]
    environment = compose_file()["x-service-environment"]
    grpc_port = int(environment["MPLSTM_GRPC_PORT"])
    for name in ("api", "api-cpu"):
        container_ports = {int(p.split(":")[1]) for p in services[name]["ports"]}
        assert container_ports == {8000, grpc_port}, name
    # Two services, one host: each host port once.
    host_ports = [p.split(":")[0] for n in ("api", "api-cpu") for p in services[n]["ports"]]
    assert len(host_ports) == len(set(host_ports))


def test_environment_names_are_settings_fields() -> None:
    for name, service in compose_file()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("MPLSTM_"):
                assert variable in settings_env_names(), f"{name}: {variable} is not a setting"


def test_prometheus_scrapes_the_metrics_route_of_both_api_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    services = compose_file()["services"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "mplstm-serve")
    assert job["metrics_path"] in served_get_paths()
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"api:8000", "api-cpu:8000"}
    for target in targets:
        host, port = target.split(":")
        assert any(p.endswith(f":{port}") for p in services[host]["ports"])
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard_folder() -> None:
    services = compose_file()["services"]
    # container path -> host path
    mounts = {c: h for h, c in (v.split(":")[:2] for v in services["grafana"]["volumes"])}
    provisioning = REPO / mounts["/etc/grafana/provisioning"].removeprefix("./")
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    provider = yaml.safe_load((provisioning / "dashboards" / "mplstm.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert (REPO / mounts[folder].removeprefix("./") / "mplstm-serve.json").is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == folder


def dashboard_queries() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "mplstm-serve.json").read_text())
    uid = dashboard["panels"][0]["datasource"]["uid"]
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert uid == datasource["datasources"][0]["uid"]
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def test_dashboard_queries_only_metrics_the_service_exports() -> None:
    exported = metric_sample_names()
    used = {
        name
        for exprs in dashboard_queries().values()
        for expr in exprs
        for name in re.findall(r"\b(?:nv|mplstm)_\w+", expr)
    }
    assert used and used <= exported, f"not exported by /metrics: {sorted(used - exported)}"
    # Request rate, latency by stage, batch size and queue depth are all on it.
    for family in (
        "nv_inference_requests",
        "nv_inference_stage_duration_seconds",
        "nv_inference_batch_size",
        "nv_inference_pending_request_count",
        # Live sessions: active sessions, steps/s, latency, masked steps by view.
        "mplstm_stream_sessions",
        "mplstm_stream_steps",
        "mplstm_stream_update_latency_seconds",
        "mplstm_stream_masked_steps",
    ):
        assert any(re.fullmatch(rf"{family}(_total|_bucket|_sum|_count)?", n) for n in used)
    # HTTP and gRPC apart: request rate and latency by the protocol label.
    exprs = [expr for exprs in dashboard_queries().values() for expr in exprs]
    assert sum("by (protocol" in e or "by (le, protocol)" in e for e in exprs) >= 2


def test_dashboard_shows_gpu_memory_from_the_dcgm_exporter_prometheus_scrapes() -> None:
    queries = dashboard_queries()["GPU memory used"]
    assert any("DCGM_FI_DEV_FB_USED" in q for q in queries)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "dcgm")
    host = job["static_configs"][0]["targets"][0].split(":")[0]
    assert compose_file()["services"][host]["profiles"] == ["gpu-metrics"]
