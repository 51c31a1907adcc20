"""`mplstm score` end to end: package, manifest shard, resume, pipeline, chunks, summary."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mplstm.core.manifest import read_manifest
from mplstm.core.package import ModelPackage, load_package, resolve_package
from mplstm.scoring.holds import Holds
from mplstm.scoring.layout import SUMMARY_FILE, RunInfo, claim_run
from mplstm.scoring.merge import MergeReport, merge_outputs
from mplstm.scoring.output import ChunkStore, OutputError
from mplstm.scoring.pipeline import ClipScore, DecodeWorkers, StageTimes, score_batches
from mplstm.scoring.rows import ScoreRow, error_row, ok_row
from mplstm.scoring.shards import Shard, select
from mplstm.scoring.summary import ScoreSummary, summarize
from mplstm.scoring.worker_inference import score_in_workers
from mplstm.service.backends.base import Backend


@dataclass(frozen=True)
class ScoreOptions:
    """Everything `mplstm score` takes."""

    model: Path  # models/NAME (latest version) or models/NAME/VERSION
    manifest: Path
    out: Path  # output folder (see mplstm.scoring.layout)
    fmt: str = "jsonl"
    batch_size: int = 8
    decode_workers: int = 2  # processes; 0 decodes in the main process
    shard: Shard = field(default_factory=Shard)
    resume: bool = False
    top_k: int = 5
    backend: str = "auto"  # the service's MPLSTM_BACKEND choices
    device: str = "auto"
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default; per worker under "workers")
    inference: str = "auto"  # where the model runs: "main", "workers" or "auto" (see INFERENCE)
    progress: bool = True


# Where inference runs. "main": one process, fed by the decode workers (what a GPU wants:
# every clip in its batches). "workers": each decode worker infers its own batches with
# ONNX Runtime on the CPU (mplstm.scoring.worker_inference says why that is faster there).
# "auto": "workers" when the backend would run on the CPU and there are decode workers.
INFERENCE: tuple[str, ...] = ("auto", "main", "workers")


class PlacementError(ValueError):
    """An `inference` choice this run cannot honour; the message says what to change."""


@dataclass(frozen=True)
class ScoreResult:
    """The shard's summary, and the merge of a single-shard run (None when sharded)."""

    summary: ScoreSummary
    merged: MergeReport | None


def run_scoring(options: ScoreOptions, holds: Holds | None = None) -> ScoreResult:
    """Score the options' shard of the manifest into `options.out`; resumable."""
    # Before any worker starts or the output folder is claimed.
    if options.inference not in INFERENCE:
        raise PlacementError(f"inference must be one of {INFERENCE}, got {options.inference!r}")
    if options.inference == "workers" and not options.decode_workers:
        raise PlacementError("--inference workers needs --decode-workers >= 1")
    holds = holds or Holds.from_env()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # Started first, so the workers start up while the package is checked and loaded.
        workers = (
            stack.enter_context(DecodeWorkers(options.decode_workers).start())
            if options.decode_workers
            else 0
        )
        return _run(options, holds, workers, start)


def _run(
    options: ScoreOptions, holds: Holds, workers: DecodeWorkers | int, start: float
) -> ScoreResult:
    from tqdm import tqdm

    from mplstm.service.backends.select import open_backend
    from mplstm.service.settings import load_settings

    package = load_package(resolve_package(options.model))
    manifest = package.manifest
    settings = load_settings(
        backend=options.backend, device=options.device, intra_op_threads=options.threads
    )
    records = select(read_manifest(options.manifest, check_files=False), options.shard)
    store, done = _open_output(options, package)
    todo = [r for r in records if r.id not in done]
    # The service's decode limits (MPLSTM_MAX_* apply here too): one decoding path.
    config = dataclasses.replace(manifest.preprocess_config(), limits=settings.decode_limits())
    backend = open_backend(package, settings)
    placement = _placement(options.inference, backend, workers)
    times = StageTimes()
    scored = 0
    bar = tqdm(
        total=len(records),
        initial=len(records) - len(todo),
        unit="clip",
        desc=f"score {options.shard.name}",
        disable=not options.progress,
        file=sys.stderr,
        smoothing=0.1,
    )
    # Engines are built for batches up to the package's max_batch.
    batch_size = min(options.batch_size, manifest.max_batch)
    if placement == "workers":
        assert isinstance(workers, DecodeWorkers)  # _placement picks it only with workers
        backend.close()  # each worker opens its own session
        inference_in = f"{workers.workers} decode worker{'s' * (workers.workers > 1)}"
        groups = score_in_workers(
            todo,
            package,
            config,
            workers,
            batch_size=batch_size,
            threads=options.threads,
            times=times,
            on_submit=holds.hook("decode"),
        )
    else:
        inference_in = "main process"
        groups = score_batches(
            todo,
            backend,
            config,
            batch_size=batch_size,
            decode_workers=workers,
            times=times,
            on_submit=holds.hook("decode"),
        )
    try:
        with bar:
            for group in groups:
                rows = [_row(result, manifest.labels, options.top_k) for result in group]
                store.commit(rows, midway=holds.hook("write"))
                holds.passing("between")
                scored += len(rows)
                bar.update(len(rows))
    finally:
        if placement == "main":
            backend.close()
    summary = summarize(
        store.rows(),
        manifest.labels,
        model=f"{manifest.name}/{manifest.version}",
        shard=options.shard.name,
        resumed=len(done),
        scored=scored,
        wall_s=time.perf_counter() - start,
        times=times,
        inference_in=inference_in,
    )
    summary.write(store.folder / SUMMARY_FILE)
    merged = merge_outputs(options.out) if options.shard.count == 1 else None
    return ScoreResult(summary, merged)


def _placement(choice: str, backend: Backend, workers: DecodeWorkers | int) -> str:
    """ "main" or "workers": where this run infers (see INFERENCE; the choice is checked)."""
    if choice == "workers" and backend.on_gpu:
        raise PlacementError(
            f"inference in the workers runs ONNX Runtime on the CPU, but this run's backend is "
            f"on the GPU ({backend.why}); infer in the main process, or ask for device cpu"
        )
    if choice == "auto":
        return "workers" if workers and not backend.on_gpu else "main"
    return choice


def _open_output(options: ScoreOptions, package: ModelPackage) -> tuple[ChunkStore, set[str]]:
    """The shard's chunk store, cleaned of a killed run's leftovers, and its committed ids."""
    info = RunInfo(
        package.name,
        package.version,
        str(options.manifest.resolve()),
        options.shard.count,
        options.fmt,
    )
    claim_run(options.out, info)
    store = ChunkStore(info.shard_folder(options.out, options.shard.index), options.fmt)
    store.clean()
    done = store.committed_ids()
    if done and not options.resume:
        raise OutputError(
            f"{store.folder} already holds {len(done)} rows: pass --resume to finish that run, "
            "or choose another --out"
        )
    # The shard is complete again only when this run writes its summary.
    (store.folder / SUMMARY_FILE).unlink(missing_ok=True)
    return store, done


def _row(result: ClipScore, labels: tuple[str, ...], top_k: int) -> ScoreRow:
    if result.probabilities is None:
        return error_row(result.record, result.error_code or "error", result.error or "")
    return ok_row(result.record, result.probabilities, result.views_used, labels, top_k)
