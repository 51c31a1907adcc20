"""The kustomize trees under k8s/, rendered by `kubectl kustomize` and validated against
the Kubernetes schemas (kubernetes-validate, strict) for KUBERNETES_VERSION; then checked
against the app itself: probes on routes it serves, settings it reads, commands its CLI
parses, the queue-depth metric it exports."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import (
    K8S,
    KUBERNETES_VERSION,
    REPO,
    SERVING_OVERLAYS,
    containers,
    kustomizations,
    metric_sample_names,
    of_kind,
    parse_cli,
    pod_specs,
    render,
    served_get_paths,
    settings_env_names,
)

# Custom resources have no schema in kubernetes-validate; these are the ones we use, each
# checked by its own test below instead.
CRD_GROUPS = {"monitoring.coreos.com": "Prometheus Operator (ServiceMonitor)"}
SERVING = [K8S / "overlays" / name for name in SERVING_OVERLAYS]


def tree_id(path: Path) -> str:
    return path.relative_to(K8S).as_posix()


@pytest.fixture(params=SERVING, ids=tree_id)
def serving(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def the_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    return deployment


def server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = the_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("tree", kustomizations(), ids=tree_id)
def test_every_document_validates_against_the_kubernetes_schemas(tree: Path) -> None:
    validated = []
    for doc in render(tree):
        group = doc["apiVersion"].split("/")[0]
        if group in CRD_GROUPS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {exc.path}")
        validated.append(doc["kind"])
    assert validated


def test_schema_validation_rejects_an_unknown_field() -> None:
    """The validation above is strict: a misplaced field fails it."""
    deployment = copy.deepcopy(the_deployment(render(SERVING[0])))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_serving_overlays_hold_every_part_of_the_service(serving: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in serving)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "NetworkPolicy",
        ]
    )


def test_gpu_overlay_requests_a_gpu_and_runs_the_gpu_image() -> None:
    gpu, cpu = (render(K8S / "overlays" / name) for name in ("gpu", "cpu"))
    resources = server_container(gpu)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    tolerations = the_deployment(gpu)["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert server_container(gpu)["image"].endswith(":gpu")
    assert "nvidia.com/gpu" not in str(server_container(cpu)["resources"])
    assert server_container(cpu)["image"].endswith(":cpu")
    config = {
        name: of_kind(docs, "ConfigMap")[0]["data"] for name, docs in (("gpu", gpu), ("cpu", cpu))
    }
    assert config["gpu"]["MPLSTM_DEVICE"] == "cuda"
    assert (config["cpu"]["MPLSTM_DEVICE"], config["cpu"]["MPLSTM_BACKEND"]) == (
        "cpu",
        "onnxruntime",
    )


def test_probes_hit_routes_the_app_serves_with_a_startup_budget(
    serving: list[dict[str, Any]],
) -> None:
    container = server_container(serving)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("startupProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] in served_get_paths(), f"{kind} {probe['path']} is not served"
        assert probe["port"] in ports
    # Readiness asks the gRPC health service (SERVING once every model is ready) on the
    # port MPLSTM_GRPC_PORT opens; a grpc probe takes a port number, not a name.
    readiness = container["readinessProbe"]
    assert set(readiness) & {"httpGet", "grpc", "exec", "tcpSocket"} == {"grpc"}
    (config,) = of_kind(serving, "ConfigMap")
    assert readiness["grpc"]["port"] == ports["grpc"] == int(config["data"]["MPLSTM_GRPC_PORT"])
    assert readiness["grpc"].get("service", "") in ("", "inference.GRPCInferenceService")
    startup = container["startupProbe"]
    # Model load and warm-up come before the port opens: minutes, not seconds.
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 300


def test_environment_names_are_settings_fields(serving: list[dict[str, Any]]) -> None:
    container = server_container(serving)
    names = {e["name"] for e in container.get("env", [])}
    (config,) = of_kind(serving, "ConfigMap")
    names |= set(config["data"])
    assert [c["configMapRef"]["name"] for c in container["envFrom"]] == [config["metadata"]["name"]]
    unknown = {n for n in names if n.startswith("MPLSTM_")} - settings_env_names()
    assert not unknown, f"not service settings: {sorted(unknown)}"


def test_api_keys_come_from_the_secret_through_the_key_file(serving: list[dict[str, Any]]) -> None:
    (secret,) = of_kind(serving, "Secret")
    (config,) = of_kind(serving, "ConfigMap")
    pod = the_deployment(serving)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(
        m for m in server_container(serving)["volumeMounts"] if m["name"] == volume["name"]
    )
    key = Path(config["data"]["MPLSTM_API_KEY_FILE"])
    assert Path(mount["mountPath"]) == key.parent
    assert key.name in secret["stringData"]


@pytest.mark.parametrize("tree", kustomizations(), ids=tree_id)
def test_container_commands_are_real_cli_invocations(tree: Path) -> None:
    for workload, pod in pod_specs(render(tree)):
        for container in containers(pod):
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv and argv[0] == "mplstm":
                args = parse_cli(argv[1:])
                assert args.command, f"{workload['metadata']['name']}: {argv}"


def test_server_runs_mplstm_serve_on_the_container_port(serving: list[dict[str, Any]]) -> None:
    container = server_container(serving)
    args = parse_cli([*container["command"][1:], *container["args"]])
    assert (args.command, args.host, args.models) == ("serve", "0.0.0.0", "/models")
    assert args.port == container["ports"][0]["containerPort"]


def test_pods_run_as_non_root_on_a_read_only_root_filesystem(
    serving: list[dict[str, Any]],
) -> None:
    pod = the_deployment(serving)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The images' USER (Dockerfile, Dockerfile.gpu).
    assert pod["securityContext"]["runAsUser"] == 10001
    container = server_container(serving)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    # Room for the service's own graceful shutdown before the kill.
    (config,) = of_kind(serving, "ConfigMap")
    assert pod["terminationGracePeriodSeconds"] > float(
        config["data"]["MPLSTM_GRACEFUL_SHUTDOWN_S"]
    )


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_service_pdb_and_network_policy_select_the_server_pods(
    serving: list[dict[str, Any]],
) -> None:
    pod_labels = the_deployment(serving)["spec"]["template"]["metadata"]["labels"]
    (service,) = of_kind(serving, "Service")
    (pdb,) = of_kind(serving, "PodDisruptionBudget")
    (policy,) = of_kind(serving, "NetworkPolicy")
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    container_ports = {p["name"] for p in server_container(serving)["ports"]}
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http": "http", "grpc": "grpc"} and set(targets.values()) <= container_ports
    (grpc_port,) = (p for p in service["spec"]["ports"] if p["name"] == "grpc")
    # Meshes and L7 load balancers balance gRPC per call only when told it is gRPC.
    assert grpc_port["appProtocol"] == "grpc"
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == ["http", "grpc"]


def test_servicemonitor_scrapes_the_metrics_route_of_the_service(
    serving: list[dict[str, Any]],
) -> None:
    (monitor,) = of_kind(serving, "ServiceMonitor")
    (service,) = of_kind(serving, "Service")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] in served_get_paths()
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_hpa_scales_on_the_exported_queue_depth_with_a_cpu_fallback(
    serving: list[dict[str, Any]],
) -> None:
    (hpa,) = of_kind(serving, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == the_deployment(serving)["metadata"]["name"]
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    name = pods_metric["pods"]["metric"]["name"]
    assert name in metric_sample_names()
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    )
    # The prometheus-adapter rule that serves that metric to the autoscaler.
    rules = yaml.safe_load((REPO / "deploy" / "prometheus-adapter-rules.yaml").read_text())
    assert [r["name"]["as"] for r in rules["rules"]["custom"]] == [name]
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_batch_job_scores_one_shard_per_index_with_the_real_cli() -> None:
    if not (K8S / "batch" / "kustomization.yaml").is_file():
        pytest.skip("k8s/batch (the batch scorer's Indexed Job) is not in this checkout")
    (job,) = of_kind(render(K8S / "batch"), "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert "backoffLimitPerIndex" in spec
    (container,) = spec["template"]["spec"]["containers"]
    args = parse_cli([*container["command"][1:], *container.get("args", [])])
    assert args.command == "score" and args.score_action is None
    # The shard comes from JOB_COMPLETION_INDEX, one per index, all writing one output.
    assert args.shard_index is None
    assert args.num_shards == spec["completions"]
    assert args.resume
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(str(args.out).startswith(f"{m}/") for m in mounts), "output off the shared volume"
