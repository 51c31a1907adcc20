"""The Indexed Job of k8s/batch is valid Kubernetes and runs a real `mplstm score` command."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mplstm.cli import build_parser
from mplstm.scoring.shards import resolve_shard

BATCH = Path(__file__).resolve().parents[2] / "k8s" / "batch"
# backoffLimitPerIndex and podReplacementPolicy are GA (on by default) from 1.33.
KUBERNETES_VERSION = "1.33.0"


def _load(name: str) -> dict:
    return yaml.safe_load((BATCH / name).read_text())


@pytest.mark.parametrize("name", ["job.yaml", "pvc.yaml"])
def test_manifests_validate_against_kubernetes_schemas_strictly(name: str) -> None:
    kubernetes_validate.validate(_load(name), KUBERNETES_VERSION, strict=True)


def test_job_runs_one_shard_per_index_on_a_gpu_with_the_shared_volume() -> None:
    job = _load("job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] >= 1
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == _load("pvc.yaml")["metadata"]["name"]
    assert "ReadWriteMany" in _load("pvc.yaml")["spec"]["accessModes"]
    mount = container["volumeMounts"][0]["mountPath"]

    command = container["command"]
    assert command[:2] == ["mplstm", "score"]
    args = build_parser().parse_args(command[1:])
    assert args.score_action is None and args.resume and args.allow_clip_errors
    assert args.num_shards == spec["completions"]
    assert str(args.manifest).startswith(mount) and str(args.out).startswith(mount)
    # Pod I scores shard I: no --shard-index, the index comes from Kubernetes.
    assert args.shard_index is None
    shards = {resolve_shard(None, args.num_shards, {"JOB_COMPLETION_INDEX": str(i)}).index
              for i in range(spec["completions"])}  # fmt: skip
    assert shards == set(range(args.num_shards))
