"""`mplstm score` end to end: package, manifest shard, resume, pipeline, chunks, summary."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.package import ModelPackage, PackageManifest, load_package, resolve_package
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.worker_pool import PoolThread
from mplstm.inference.options import BackendChoice, BackendOptions, Placement, resolve_placement
from mplstm.inference.settings import load_inference_settings
from mplstm.scoring.hooks import NO_HOOKS, ScoringHooks
from mplstm.scoring.layout import SUMMARY_FILE, RunInfo, claim_run
from mplstm.scoring.merge import MergeReport, merge_outputs
from mplstm.scoring.output import ChunkStore, OutputError
from mplstm.scoring.pipeline import (
    ClipScore,
    StageTimes,
    score_batches,
    score_in_workers,
)
from mplstm.scoring.rows import ScoreRow, error_row, ok_row
from mplstm.scoring.shards import Shard, select
from mplstm.scoring.summary import ScoreSummary, summarize


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
    backend: BackendChoice = BackendChoice.AUTO  # the service's MPLSTM_BACKEND choices
    device: str = "auto"
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default; per worker under WORKERS)
    inference: Placement = Placement.AUTO  # where the model runs (mplstm.inference.options)
    progress: bool = True
    camera_checks: bool | None = None  # None: MPLSTM_CAMERA_CHECKS (default on)


@dataclass(frozen=True)
class ScoreResult:
    """The shard's summary, and the merge of a single-shard run (None when sharded)."""

    summary: ScoreSummary
    merged: MergeReport | None


@dataclass(frozen=True)
class _Run:
    """What a run works with once the package, the shard and the output are open."""

    options: ScoreOptions
    package: ModelPackage
    config: PreprocessConfig  # the package's, under the decode limits of MPLSTM_MAX_*
    backend: BackendOptions
    store: ChunkStore
    done: set[str]  # ids committed by an earlier run
    todo: list[ClipRecord]  # records still to score
    total: int  # records of the shard


def run_scoring(options: ScoreOptions, hooks: ScoringHooks = NO_HOOKS) -> ScoreResult:
    """Score the options' shard of the manifest into `options.out`; resumable."""
    # Before any worker starts or the output folder is claimed.
    resolve_placement(
        options.inference, on_gpu=False, workers=options.decode_workers, what="--inference"
    )
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # Started first, so the workers start up while the package is checked and loaded.
        pool = (
            stack.enter_context(PoolThread(options.decode_workers).start())
            if options.decode_workers
            else None
        )
        run = _open_run(options)
        times = StageTimes()
        inference_in, scored = _score(run, pool, times, hooks)
    summary = summarize(
        run.store.rows(),
        run.package.manifest.labels,
        model=f"{run.package.manifest.name}/{run.package.manifest.version}",
        shard=options.shard.name,
        resumed=len(run.done),
        scored=scored,
        wall_s=time.perf_counter() - start,
        times=times,
        inference_in=inference_in,
    )
    summary.write(run.store.folder / SUMMARY_FILE)
    merged = merge_outputs(options.out) if options.shard.count == 1 else None
    return ScoreResult(summary, merged)


def _open_run(options: ScoreOptions) -> _Run:
    package = load_package(resolve_package(options.model))
    # The service's decode limits (MPLSTM_MAX_* apply here too): one decoding path.
    checks = {} if options.camera_checks is None else {"camera_checks": options.camera_checks}
    settings = load_inference_settings(
        backend=options.backend, device=options.device, intra_op_threads=options.threads, **checks
    )
    config = dataclasses.replace(
        package.manifest.preprocess_config(),
        limits=settings.decode_limits(),
        camera_checks=settings.camera_checks,
    )
    records = select(read_manifest(options.manifest, check_files=False), options.shard)
    store, done = _open_output(options, package)
    todo = [r for r in records if r.id not in done]
    return _Run(
        options, package, config, settings.backend_options(), store, done, todo, len(records)
    )


def _score(
    run: _Run, pool: PoolThread | None, times: StageTimes, hooks: ScoringHooks
) -> tuple[str, int]:
    """Score the run's records into its store; (where inference ran, rows committed)."""
    from mplstm.inference.select import open_backend

    options = run.options
    backend = open_backend(run.package, run.backend)
    placement = resolve_placement(
        options.inference,
        on_gpu=backend.on_gpu,
        workers=pool.workers if pool else 0,
        what="--inference",
    )
    # Engines are built for batches up to the package's max_batch.
    batch_size = min(options.batch_size, run.package.manifest.max_batch)
    if placement is Placement.WORKERS:
        assert pool is not None  # resolve_placement picks WORKERS only with workers
        backend.close()  # each worker opens its own session
        inference_in = f"{pool.workers} decode worker{'s' * (pool.workers > 1)}"
        groups = score_in_workers(
            run.todo,
            run.package,
            run.config,
            pool,
            batch_size=batch_size,
            threads=options.threads,
            times=times,
            hooks=hooks,
        )
        return inference_in, _commit_all(run, groups, hooks)
    try:
        groups = score_batches(
            run.todo,
            backend,
            run.config,
            batch_size=batch_size,
            decode_workers=pool or 0,
            times=times,
            hooks=hooks,
        )
        return "main process", _commit_all(run, groups, hooks)
    finally:
        backend.close()


def _commit_all(run: _Run, groups: Iterator[list[ClipScore]], hooks: ScoringHooks) -> int:
    """Commit each group of results as one chunk, with a progress bar; rows committed."""
    from tqdm import tqdm

    scored = 0
    with tqdm(
        total=run.total,
        initial=run.total - len(run.todo),
        unit="clip",
        desc=f"score {run.options.shard.name}",
        disable=not run.options.progress,
        file=sys.stderr,
        smoothing=0.1,
    ) as bar:
        for group in groups:
            rows = [_row(result, run.package.manifest, run.options.top_k) for result in group]
            run.store.commit(hooks.writing(rows))
            hooks.chunk_committed()
            scored += len(rows)
            bar.update(len(rows))
    return scored


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


def _row(result: ClipScore, manifest: PackageManifest, top_k: int) -> ScoreRow:
    if result.probabilities is None:
        return error_row(
            result.record, result.error_code or "error", result.error or "", result.views_dropped
        )
    return ok_row(
        result.record,
        result.probabilities,
        result.views_used,
        manifest.labels,
        top_k,
        result.views_dropped,
        manifest.expected_accuracy(result.views_used),
    )
