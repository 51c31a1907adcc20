"""The model repository: every `<models_dir>/<name>/<latest version>/`, loaded and warmed up.

A package is verified (every sha256) before any of its files is opened, so a tampered
or half-copied package is refused with a log line naming the file. The server is
ready only when every model it was asked to serve is loaded and warmed up (a model
that failed to load keeps readiness off: a broken rollout must not take traffic).
`load(name)` swaps in the newest version without a restart; if that fails, the
version that was serving keeps serving. A request holds the version it picked
(`serving`) until it is answered, uploads included: a reload or unload retires the
old version only after those requests are done, so none of them is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mplstm.core.cpus import threads_per_worker
from mplstm.core.package import (
    ModelPackage,
    PackageError,
    PackageManifest,
    find_packages,
    load_package,
)
from mplstm.core.preprocess import PreprocessConfig
from mplstm.inference.backend import Backend, BackendUnavailableError, warm_up
from mplstm.inference.options import Placement, resolve_placement
from mplstm.inference.select import open_backend
from mplstm.inference.step import StepBackend
from mplstm.service.batcher import DynamicBatcher
from mplstm.service.cameras import watch as watch_cameras
from mplstm.service.errors import ModelLoadError, ModelNotFoundError, ModelNotReadyError
from mplstm.service.metrics import ServiceMetrics
from mplstm.service.settings import Settings
from mplstm.service.step_scheduler import StepScheduler
from mplstm.service.video_workers import VideoWorkers, WorkerQueue

log = logging.getLogger(__name__)


class InFlight:
    """Requests holding a model version; retiring it waits until there are none."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """One request holds the version while the block runs."""
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def idle(self) -> None:
        """Return once no request holds the version."""
        await self._idle.wait()


@dataclass(frozen=True)
class LoadedModel:
    """A package being served: its backend, its batcher, and its video route's placement."""

    name: str  # the repository folder name, which routes use
    package: ModelPackage
    backend: Backend
    batcher: DynamicBatcher
    # Set where the video route infers in the workers (Placement.WORKERS), else the batcher.
    worker_queue: WorkerQueue | None = None
    in_flight: InFlight = field(default_factory=InFlight, compare=False, repr=False)
    # Live packages: the continuous-batching scheduler of their streaming sessions.
    live: StepScheduler | None = None

    @property
    def placement(self) -> Placement:
        """Where /v1 requests run inference: WORKERS or MAIN (the batcher)."""
        return Placement.MAIN if self.worker_queue is None else Placement.WORKERS

    @property
    def manifest(self) -> PackageManifest:
        return self.package.manifest

    @functools.cached_property
    def preprocess(self) -> PreprocessConfig:
        """The manifest's preprocessing, built once (every video request needs it)."""
        return self.manifest.preprocess_config()

    @property
    def version(self) -> str:
        return self.package.path.name


def warm_up_step(step: StepBackend, manifest: PackageManifest) -> None:
    """One zero step, so the first session does not pay for lazy initialisation."""
    pre = manifest.preprocess
    clip = np.zeros((1, len(manifest.view_names), 1, pre.channels, pre.height, pre.width), np.uint8)
    mask = np.ones((1, len(manifest.view_names)), bool)
    try:
        step.run(clip, mask, step.zero_state(1))
    except Exception as exc:  # whatever the runtime raises, the model cannot stream
        step.close()
        raise BackendUnavailableError(f"step model warm-up failed: {exc}") from exc


@dataclass(frozen=True)
class ModelState:
    """What the repository knows about one model name (Triton's repository index entry)."""

    name: str
    version: str | None
    state: str  # "READY" | "UNAVAILABLE" | "UNLOADED"
    reason: str = ""


class ModelRepository:
    """Loads, serves, reloads and unloads the packages under `settings.models_dir`."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, workers: VideoWorkers) -> None:
        self.settings = settings
        self.metrics = metrics
        self.workers = workers
        self._models: dict[str, LoadedModel] = {}
        self._failures: dict[str, str] = {}
        self._wanted: set[str] = set()
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def ready(self) -> bool:
        """Start-up finished and every wanted model is serving."""
        return self._started and bool(self._wanted) and self._wanted <= self._models.keys()

    async def load_all(self) -> None:
        """Load the newest version of every model in the repository (failures are logged)."""
        try:
            names = list(find_packages(self.settings.models_dir))
        except PackageError as exc:
            log.error("no models to serve: %s", exc)
            names = []
        if not names:
            log.error("model repository %s holds no model package", self.settings.models_dir)
        for name in names:
            # A failure is logged by load() and leaves the server not ready.
            with contextlib.suppress(ModelLoadError):
                await self.load(name)
        self._started = True
        log.info("serving %d of %d models: %s", len(self._models), len(names), sorted(self._models))

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The serving model `name` (at `version`, if given); 404 if unknown, 503 if not loaded."""
        model = self._models.get(name)
        if model is not None:
            if version is not None and version != model.version:
                raise ModelNotFoundError(
                    f"model {name!r} serves version {model.version}, not {version!r}"
                )
            return model
        if name in self._failures:
            raise ModelNotReadyError(f"model {name!r} failed to load: {self._failures[name]}")
        if name in self.names():
            raise ModelNotReadyError(
                f"model {name!r} is not loaded; POST /v2/repository/models/{name}/load"
            )
        raise ModelNotFoundError(f"no model {name!r}; this server has {sorted(self.names())}")

    @contextlib.contextmanager
    def serving(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """The version of `name` serving now (404 if not `version`), held until the block ends.

        A reload or unload meanwhile retires that version only after the block: a request
        is answered by the version that served when it arrived, however long its upload.
        """
        model = self.get(name, version)
        with model.in_flight.held():
            yield model

    def serves(self, name: str) -> bool:
        """Whether `name` is loaded and serving."""
        return name in self._models

    def models(self) -> list[LoadedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def names(self) -> set[str]:
        """Every model name known: in the repository folder, serving, or failed."""
        try:
            on_disk = set(find_packages(self.settings.models_dir))
        except PackageError:
            on_disk = set()
        return on_disk | self._models.keys() | self._failures.keys()

    def states(self) -> list[ModelState]:
        out = []
        for name in sorted(self.names()):
            model = self._models.get(name)
            if model is not None:
                out.append(ModelState(name, model.version, "READY"))
            elif name in self._failures:
                out.append(ModelState(name, None, "UNAVAILABLE", self._failures[name]))
            else:
                out.append(ModelState(name, None, "UNLOADED"))
        return out

    async def load(self, name: str) -> LoadedModel:
        """Load (or reload) the newest version of `name`; on failure the old one keeps serving."""
        async with self._lock:
            folder = self._latest(name)
            self._wanted.add(name)
            try:
                package, backend, step = await asyncio.to_thread(self._open, folder)
                worker_queue = await self._worker_queue(name, package, backend)
            except (PackageError, BackendUnavailableError, OSError, ValueError) as exc:
                reason = str(exc)
                old = self._models.get(name)
                keeps = f"; version {old.version} keeps serving" if old else ""
                log.error("model %s: refusing to load %s: %s%s", name, folder, reason, keeps)
                if old is None:
                    self._failures[name] = reason
                raise ModelLoadError(f"model {name!r} failed to load: {reason}{keeps}") from exc
            model = self._start(name, package, backend, worker_queue, step)
            old = self._models.get(name)
            self._models[name] = model
            self._failures.pop(name, None)
            self._update_gauges(old, model)
            watch_cameras(self.metrics, package.manifest, name, self.settings.min_expected_accuracy)
            log.info(
                "model %s: version %s ready (%s; video inference placement: %s)",
                name,
                model.version,
                backend.description,
                model.placement,
            )
        if old is not None:
            await self._retire(old)
        return model

    async def unload(self, name: str) -> None:
        """Stop serving `name` after its queued requests are answered."""
        async with self._lock:
            if name not in self.names():
                raise ModelNotFoundError(f"no model {name!r}")
            self._wanted.discard(name)
            self._failures.pop(name, None)
            old = self._models.pop(name, None)
            self._update_gauges(old, None)
        if old is not None:
            await self._retire(old)
            log.info("model %s: version %s unloaded", name, old.version)

    async def close(self) -> None:
        """Drain and stop every model."""
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(self._retire(m) for m in models))

    def _latest(self, name: str) -> Path:
        try:
            versions = find_packages(self.settings.models_dir).get(name)
        except PackageError as exc:
            raise ModelLoadError(str(exc)) from exc
        if not versions:
            raise ModelNotFoundError(
                f"no model {name!r} in {self.settings.models_dir} (expected {name}/<version>/)"
            )
        return versions[-1]

    def _open(self, folder: Path) -> tuple[ModelPackage, Backend, StepBackend | None]:
        """Verify, open and warm up a package, and a live one's step model (blocking)."""
        package = load_package(folder)
        backend = open_backend(package, self.settings.backend_options())
        warm_up(backend, package.manifest)
        step = None
        if package.manifest.live:
            try:
                options = dataclasses.replace(
                    self.settings.backend_options(), threads=self.settings.stream_intra_op_threads
                )
                step = StepBackend.open(package, options)
                warm_up_step(step, package.manifest)
            except BackendUnavailableError:
                backend.close()
                raise
        return package, backend, step

    async def _worker_queue(
        self, name: str, package: ModelPackage, backend: Backend
    ) -> WorkerQueue | None:
        """The model's video route in the workers, warmed up there; None: the batcher."""
        try:
            placement = resolve_placement(
                self.settings.video_inference,
                on_gpu=backend.on_gpu,
                workers=self.workers.workers,
                what="MPLSTM_VIDEO_INFERENCE",
            )
            if placement is Placement.MAIN:
                return None
            queue = WorkerQueue(
                name,
                package,
                self.workers,
                # The usable CPUs shared out: workers infer side by side, one clip each.
                threads=threads_per_worker(self.workers.workers),
                # A session per model served, and one for the old version during a reload.
                sessions_kept=lambda: len(self._wanted) + 1,
                max_queue=self.settings.max_queue,
                metrics=self.metrics,
            )
            await queue.warm_up()
        except (BackendUnavailableError, ValueError):
            backend.close()
            raise
        return queue

    def _start(
        self,
        name: str,
        package: ModelPackage,
        backend: Backend,
        worker_queue: WorkerQueue | None,
        step: StepBackend | None = None,
    ) -> LoadedModel:
        live = None
        if step is not None:
            live = StepScheduler(
                name,
                step,
                max_sessions=self.settings.max_sessions,
                max_batch=self.settings.stream_max_batch,
                max_delay_s=self.settings.stream_max_delay_ms / 1000,
                metrics=self.metrics.stream,
            )
            live.start()
        batcher = DynamicBatcher(
            name,
            backend.infer,
            max_batch=min(self.settings.max_batch, package.manifest.max_batch),
            max_delay_s=self.settings.max_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            metrics=self.metrics,
            default_level=self.settings.default_priority_level,
        )
        batcher.start()
        return LoadedModel(name, package, backend, batcher, worker_queue, live=live)

    async def _retire(self, model: LoadedModel) -> None:
        if model.live is not None:
            await model.live.stop()
            model.live.backend.close()
        if model.in_flight.count:
            log.info(
                "model %s: version %s retires once its %d requests in flight are answered",
                model.name,
                model.version,
                model.in_flight.count,
            )
        await model.in_flight.idle()
        if model.worker_queue is not None:
            await model.worker_queue.stop()
        await model.batcher.stop()
        model.backend.close()

    def _update_gauges(self, old: LoadedModel | None, new: LoadedModel | None) -> None:
        if old is not None:
            self.metrics.model_ready.labels(old.name, old.version).set(0)
        if new is not None:
            self.metrics.model_ready.labels(new.name, new.version).set(1)
        self.metrics.models_loaded.set(len(self._models))
