"""Data-parallel training under torchrun (gloo, CPU): same weights as one process, resume,
a killed rank, the global-batch sampler, the shared clip cache, the Kubernetes Job."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mplstm.cli import build_parser, main
from mplstm.core.synth import SynthConfig, generate
from mplstm.training.checkpoint import load_checkpoint
from mplstm.training.data import ClipCache, decode_record, read_data_spec
from mplstm.training.distributed import DistributedError, GlobalBatchSampler, World, epoch_order

ROOT = Path(__file__).resolve().parents[2]
K8S_TRAINING = ROOT / "k8s" / "training"
# 12 training clips of 2 speakers (identity task), 3 views, 32x32.
TINY = SynthConfig(
    task="identity", speakers=2, words=4, views=3, clips_per_pair=2, size=(32, 32), seed=5
)
# A tiny model, and no dropout nor view dropout: those draw from each rank's own RNG, so
# with them on, 1 and 2 processes agree in distribution only, not weight for weight.
SMALL = [
    "--set", "model.hidden_size=8",
    "--set", "model.widths=[4,8,8]",
    "--set", "data.frames=6",
    "--set", "data.height=24",
    "--set", "data.width=24",
    "--set", "model.dropout=0.0",
    "--set", "model.view_dropout=0.0",
    "--seed", "3",
    "--threads", "1",
    "--eval-split", "none",
    "--no-progress",
]  # fmt: skip
# 2 vs 1 process: the gradient sums and the BatchNorm moments are added in another order;
# measured differences after 4 steps are ~2e-7.
WEIGHT_TOLERANCE = 1e-5
# A job with a dead rank must end within this (torchrun stops the other rank at once; the
# --dist-timeout below bounds a rank blocked in a collective).
FAILURE_TIMEOUT_S = 90
DIST_TIMEOUT = ["--dist-timeout", "30"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp-set")
    generate(TINY, out, workers=1, progress=False)
    return out / "manifest.jsonl"


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    """A `mplstm train` command line under torchrun on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), "-m", "mplstm", "train", *args,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]["state_dict"]


def test_two_processes_resumed_end_with_the_weights_of_one_process(
    manifest: Path, tmp_path: Path
) -> None:
    # Global batch 8 over 12 clips: steps of 8 and 4 clips, so 4 and 2 per rank.
    run = ["--data", str(manifest), *SMALL, "--batch-size", "8", "--epochs", "2"]
    assert main(["train", *run, "--out", str(tmp_path / "one")]) == 0

    two = str(tmp_path / "two")
    # --time-limit 0: both ranks stop together after the first step, mid-epoch.
    _run(_torchrun(*run, *DIST_TIMEOUT, "--out", two, "--time-limit", "0"))
    stopped = load_checkpoint(tmp_path / "two" / "last.pt")
    assert stopped["step"] == 1 and stopped["train"]["world_size"] == 2
    assert len(stopped["train"]["rank_rng"]) == 2
    resumed = _run(_torchrun("--out", two, "--resume", *DIST_TIMEOUT, "--threads", "1"))
    assert "resuming" in resumed.stdout and "on 2 process(es)" in resumed.stdout
    assert resumed.stdout.count("epoch 2/2") == 1  # rank 0 alone logs

    one = load_checkpoint(tmp_path / "one" / "last.pt")
    both = load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["step"] == both["step"] == 4
    for name, tensor in one["model"]["state_dict"].items():
        torch.testing.assert_close(
            both["model"]["state_dict"][name].float(),
            tensor.float(),
            atol=WEIGHT_TOLERANCE,
            rtol=0,
            msg=name,
        )
    # Metrics are reduced over the ranks: the same clips, loss and accuracy as one process.
    one_rows = one["train"]["progress"]["history"]
    two_rows = both["train"]["progress"]["history"]
    assert [r["epoch"] for r in two_rows] == [0.5, 1.0, 2.0]
    for a, b in zip(one_rows, two_rows[1:], strict=True):
        assert b["val_acc"] == a["val_acc"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    assert two_rows[-1]["train_loss"] == pytest.approx(one_rows[-1]["train_loss"], abs=1e-5)
    assert not list((tmp_path / "two").glob(".*.tmp"))


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a child of the launcher process)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


def test_killing_a_rank_fails_the_job_and_a_restart_resumes_from_the_last_checkpoint(
    manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # The same command line starts and restarts the job, as in k8s/training/job.yaml.
    command = _torchrun(
        "--data", str(manifest), *SMALL, "--batch-size", "4", "--epochs", "6",
        "--out", str(out), "--resume", "auto", *DIST_TIMEOUT,
    )  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    job = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Epoch 1 done (last.pt written): kill rank 1 in what follows (3 steps an epoch, so
        # 15 steps are left: the job cannot end first).
        while not (out / "last.pt").exists() and job.poll() is None:
            time.sleep(0.05)
        victim = _worker_pid(job.pid, rank=1)
        assert victim is not None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(victim, signal.SIGKILL)
        code = job.wait(timeout=FAILURE_TIMEOUT_S)
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    assert code != 0
    last = load_checkpoint(out / "last.pt")
    assert 1 <= last["epoch"] < 6

    restarted = _run(command)
    assert f"resuming {out} at epoch {last['epoch']:g}, step {last['step']}" in restarted.stdout
    final = load_checkpoint(out / "last.pt")
    assert final["step"] == 6 * 3 and final["epoch"] == 6
    assert [row["epoch"] for row in final["train"]["progress"]["history"]] == [1, 2, 3, 4, 5, 6]

    # The same --out with another config is refused, not silently resumed.
    changed = [*command[command.index("train") :], "--lr", "0.1"]
    assert main(changed) == 2


@pytest.mark.parametrize(("length", "batch", "ranks"), [(12, 8, 2), (13, 4, 2), (7, 6, 3)])
def test_global_batches_of_several_ranks_hold_the_clips_of_one_process(
    length: int, batch: int, ranks: int
) -> None:
    single = GlobalBatchSampler(length, World(), batch, seed=1)
    single.set_epoch(2)
    order = list(single)
    assert order == epoch_order(length, 1, 2)
    shares = []
    for rank in range(ranks):
        sampler = GlobalBatchSampler(length, World(rank=rank, size=ranks), batch, seed=1)
        sampler.set_epoch(2)
        shares.append(list(sampler))
    local = batch // ranks
    steps = {len(range(0, len(share), local)) for share in shares}
    assert steps == {single.batches}  # every rank takes every step
    for k in range(single.batches):
        clips = []
        for rank, share in enumerate(shares):
            chunk = share[k * local : (k + 1) * local]
            weights = GlobalBatchSampler(length, World(rank=rank, size=ranks), batch, 1).weights(
                k, len(chunk)
            )
            clips += [clip for clip, w in zip(chunk, weights.tolist(), strict=True) if w]
        assert sorted(clips) == sorted(order[k * batch : (k + 1) * batch])
        assert len(clips) == single.clips_in(k)


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused() -> None:
    with pytest.raises(DistributedError, match="multiple of the number of processes"):
        GlobalBatchSampler(10, World(rank=0, size=3), 4, seed=0)


def _fill_cache(manifest: str, folder: str, config_dict: dict) -> None:
    from mplstm.core.preprocess import PreprocessConfig

    cache = ClipCache(folder, PreprocessConfig.from_dict(config_dict))
    for record in read_data_spec(manifest).records:
        cache.load(record)


def test_several_processes_fill_one_clip_cache_at_once(manifest: Path, tmp_path: Path) -> None:
    from mplstm.core.preprocess import PreprocessConfig

    spec = read_data_spec(manifest)
    config = PreprocessConfig(frames=6, height=24, width=24, channels=1, view_names=spec.view_names)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_fill_cache, args=(str(manifest), str(tmp_path), config.to_dict()))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
    cache = ClipCache(tmp_path, config)
    for record in spec.records:
        cached = cache.load(record)
        assert (cached.frames == decode_record(record, config).frames).all(), record.id
    assert cache.hits == len(spec.records) and cache.decodes == 0


def _documents() -> list[dict]:
    docs = []
    for path in sorted(K8S_TRAINING.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_training_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    docs = _documents()
    assert {d["kind"] for d in docs} == {"Job", "Service", "PersistentVolumeClaim"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kustomization = yaml.safe_load((K8S_TRAINING / "kustomization.yaml").read_text())
    listed = {(K8S_TRAINING / name).resolve() for name in kustomization["resources"]}
    assert listed == {p.resolve() for p in K8S_TRAINING.glob("*.yaml")} - {
        (K8S_TRAINING / "kustomization.yaml").resolve()
    }


def test_the_training_job_runs_torchrun_on_a_real_mplstm_train_command() -> None:
    (job,) = [d for d in _documents() if d["kind"] == "Job"]
    (service,) = [d for d in _documents() if d["kind"] == "Service"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[0] == "torchrun"
    launcher = dict(a.removeprefix("--").split("=", 1) for a in command if a.count("=") == 1)
    train = command[command.index("mplstm") + 1 :]
    args = build_parser().parse_args(train)
    assert args.command == "train" and args.func.__module__ == "mplstm.cli.train"
    assert args.resume == "auto" and args.dist_timeout is not None and args.device == "cuda"
    # One pod per node, reachable by name through the headless Service, GPUs per pod =
    # processes per node, and rendezvous on pod 0.
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(launcher["nnodes"])
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(launcher["nproc-per-node"]) == int(gpus)
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    host, port = launcher["rdzv-endpoint"].split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert launcher["rdzv-backend"] == "c10d" and int(launcher["max-restarts"]) > 0
    assert pod["restartPolicy"] == "OnFailure"
    # Data and the run folder live on the shared volume.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    shared = mounts["shared"]
    assert str(args.data).startswith(shared) and str(args.out).startswith(shared)
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["shared"]["persistentVolumeClaim"]["claimName"]
    (pvc,) = [d for d in _documents() if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The config ships in the image (k8s/training/Dockerfile copies configs/ there).
    assert args.config.parent == Path("/opt/mplstm/configs")
    assert (ROOT / "configs" / args.config.name).is_file()
    assert "COPY configs /opt/mplstm/configs" in (K8S_TRAINING / "Dockerfile").read_text()
