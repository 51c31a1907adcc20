"""The model package (DESIGN.md §5): the only thing that passes from export to serving.

A Triton-style repository holds `<root>/<name>/<version>/` folders, each with
`model.onnx`, optional `model.fp16.onnx` and TensorRT `.plan` engines, an optional
Triton `config.pbtxt`, and `manifest.json` described by `PackageManifest`. The
manifest lists the sha256 of every other file; `load_package` checks them all
before anything is loaded, so a tampered or half-copied package is refused.

torch-free: export writes packages with `write_package_manifest`, the service and
the batch scorer read them with `load_package` / `find_packages`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.view_subsets import ViewSubsetTable

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
ONNX_FP16_NAME = "model.fp16.onnx"
STEP_ONNX_NAME = "model.step.onnx"  # live packages: one chunk of steps + state in and out
TRITON_CONFIG_NAME = "config.pbtxt"
# The output identity models add: an L2-normalised embedding [B, E] (DESIGN.md §3, §10).
EMBEDDING_OUTPUT = "embedding"


class PackageError(ValueError):
    """A model package that cannot be used: missing files, bad manifest, hash mismatch."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; symbolic dims are names ("batch", "time")."""

    name: str
    dtype: str  # numpy dtype name: "uint8", "bool", "float32", "float16"
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TensorSpec:
        return cls(str(values["name"]), str(values["dtype"]), tuple(values["shape"]))


@dataclass(frozen=True)
class EngineInfo:
    """A TensorRT engine in the package and what it was built for."""

    file: str
    gpu_arch: str  # e.g. "sm_90"
    gpu_name: str
    tensorrt_version: str
    precision: str  # "fp32" | "fp16"
    plugin: bool  # True: the recurrent cell runs as the mplstm plugin; False: inlined body
    max_batch: int
    frames_range: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["frames_range"] = list(self.frames_range)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EngineInfo:
        values = dict(values)
        values["frames_range"] = tuple(values["frames_range"])
        return cls(**values)


@dataclass(frozen=True)
class StateSpec:
    """One state tensor a step model carries: in as `name`, out as `output`, batch first."""

    name: str
    output: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # per sequence (the batch axis, first, left out)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StateSpec:
        return cls(
            str(values["name"]),
            str(values["output"]),
            str(values["dtype"]),
            tuple(int(d) for d in values["shape"]),
        )


@dataclass(frozen=True)
class StepSpec:
    """A live package's step model (DESIGN.md §5): one chunk of frames + state in, out.

    Inputs: `clip` uint8 [B, V, t, C, H, W] (any t >= 1), `view_mask` bool [B, V], then
    every state tensor; outputs: `logits` and `probabilities` [B, classes] after the
    chunk's last step, then every new state. A sequence starts from all-zero state.
    """

    file: str
    state: tuple[StateSpec, ...]
    inputs: tuple[str, ...] = ("clip", "view_mask")
    outputs: tuple[str, ...] = ("logits", "probabilities")

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "state": [s.to_dict() for s in self.state],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StepSpec:
        return cls(
            file=str(values["file"]),
            state=tuple(StateSpec.from_dict(s) for s in values["state"]),
            inputs=tuple(values.get("inputs") or ("clip", "view_mask")),
            outputs=tuple(values.get("outputs") or ("logits", "probabilities")),
        )


@dataclass
class PackageManifest:
    """Everything serving needs to know about a package, as stored in manifest.json."""

    name: str
    version: str
    task: str  # "lipreading" | "identity" | free text
    model_family: str  # the training registry name, e.g. "mplstm"
    labels: tuple[str, ...]
    view_names: tuple[str, ...]
    view_yaws: tuple[float, ...] | None
    # The `core` preprocessing that turns video into the model's uint8 clip input; its
    # mean/std are the normalisation the graph applies inside (informational here).
    preprocess: PreprocessConfig
    view_dropout: float  # > 0: trained to survive absent views (they may be masked)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int = 32
    frames_range: tuple[int, int] = (1, 1000)  # T the model was exported and checked for
    training: dict[str, Any] = field(default_factory=dict)  # metrics and provenance
    parity: dict[str, Any] = field(default_factory=dict)  # export-time parity results
    # Accuracy of every view subset on held-out clips (None: not measured).
    view_accuracy: ViewSubsetTable | None = None
    engines: tuple[EngineInfo, ...] = ()
    # Identity models with an `embedding` output: its size, how people are matched, and
    # thresholds at stated false-accept rates measured on people never seen in training
    # (mplstm.core.openset; empty for models without an embedding).
    open_set: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = FORMAT_VERSION
    created: str = ""
    mplstm_version: str = ""
    # Live packages: the step model for streaming sessions (None: offline only).
    step: StepSpec | None = None

    @property
    def live(self) -> bool:
        """Whether the package streams: a step model and fixed-rate sampling."""
        return self.step is not None and self.preprocess.fps is not None

    @property
    def embedding_size(self) -> int:
        """E of the `embedding` output [B, E]; 0 when the model has none."""
        spec = next((s for s in self.outputs if s.name == EMBEDDING_OUTPUT), None)
        return int(spec.shape[-1]) if spec is not None else 0

    def open_set_thresholds(self) -> dict[float, float]:
        """False-accept rate -> cosine threshold, as measured at export (may be empty)."""
        return {float(t["far"]): float(t["threshold"]) for t in self.open_set.get("thresholds", ())}

    @property
    def allows_missing_views(self) -> bool:
        """Whether requests may leave views out (the model was trained with view dropout)."""
        return self.view_dropout > 0

    def expected_accuracy(self, views_used: Sequence[str]) -> float | None:
        """Measured accuracy with exactly `views_used` present; None when not measured."""
        return None if self.view_accuracy is None else self.view_accuracy.accuracy(views_used)

    def preprocess_config(self) -> PreprocessConfig:
        """The `core` config for this package's requests: its views, in model order."""
        return dataclasses.replace(
            self.preprocess,
            view_names=self.view_names,
            allow_missing_views=self.allows_missing_views,
        )

    def to_dict(self) -> dict[str, Any]:
        preprocess = self.preprocess.to_dict()
        # Whether cameras are checked is the server's policy (MPLSTM_CAMERA_CHECKS), not
        # the model's preprocessing.
        preprocess.pop("camera_checks")
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "model_family": self.model_family,
            "labels": list(self.labels),
            "views": [
                {"name": n, "yaw": None if self.view_yaws is None else self.view_yaws[i]}
                for i, n in enumerate(self.view_names)
            ],
            "preprocess": preprocess,
            "view_dropout": self.view_dropout,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "max_batch": self.max_batch,
            "frames_range": list(self.frames_range),
            "training": self.training,
            "parity": self.parity,
            "view_accuracy": None if self.view_accuracy is None else self.view_accuracy.to_dict(),
            "engines": [e.to_dict() for e in self.engines],
            "open_set": self.open_set,
            "files": dict(sorted(self.files.items())),
            "created": self.created,
            "mplstm_version": self.mplstm_version,
            **({"step": self.step.to_dict()} if self.step is not None else {}),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PackageManifest:
        views = values["views"]
        yaws = [v.get("yaw") for v in views]
        return cls(
            format_version=int(values["format_version"]),
            name=str(values["name"]),
            version=str(values["version"]),
            task=str(values["task"]),
            model_family=str(values["model_family"]),
            labels=tuple(values["labels"]),
            view_names=tuple(v["name"] for v in views),
            view_yaws=None if any(y is None for y in yaws) else tuple(float(y) for y in yaws),
            preprocess=PreprocessConfig.from_dict(values["preprocess"]),
            view_dropout=float(values["view_dropout"]),
            inputs=tuple(TensorSpec.from_dict(s) for s in values["inputs"]),
            outputs=tuple(TensorSpec.from_dict(s) for s in values["outputs"]),
            max_batch=int(values["max_batch"]),
            frames_range=tuple(values["frames_range"]),  # type: ignore[arg-type]
            training=dict(values.get("training") or {}),
            parity=dict(values.get("parity") or {}),
            view_accuracy=(
                ViewSubsetTable.from_dict(values["view_accuracy"])
                if values.get("view_accuracy")
                else None
            ),
            engines=tuple(EngineInfo.from_dict(e) for e in values.get("engines") or ()),
            open_set=dict(values.get("open_set") or {}),
            files=dict(values["files"]),
            created=str(values.get("created", "")),
            mplstm_version=str(values.get("mplstm_version", "")),
            step=StepSpec.from_dict(values["step"]) if values.get("step") else None,
        )


@dataclass(frozen=True)
class ModelPackage:
    """A package on disk whose files have been checked against its manifest."""

    path: Path
    manifest: PackageManifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def file(self, relative: str) -> Path:
        """A file of the package; PackageError if the manifest does not list it."""
        if relative not in self.manifest.files:
            raise PackageError(f"{self.path}: the package has no file {relative!r}")
        return self.path / relative


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (engines can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_package_manifest(folder: str | Path) -> PackageManifest:
    """Parse `folder/manifest.json`; PackageError naming the file when it is unusable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise PackageError(f"{path} does not exist: {folder} is not a model package")
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(values, dict) or values.get("format_version") != FORMAT_VERSION:
        found = values.get("format_version") if isinstance(values, dict) else None
        raise PackageError(
            f"{path}: package format {found!r} is not {FORMAT_VERSION}; re-export the model "
            "with this version of mplstm"
        )
    try:
        return PackageManifest.from_dict(values)
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def file_problems(folder: str | Path, manifest: PackageManifest) -> dict[str, str | None]:
    """Each listed file → None when its sha256 matches, else what is wrong with it."""
    folder = Path(folder)
    problems: dict[str, str | None] = {}
    for relative, expected in sorted(manifest.files.items()):
        path = folder / relative
        if not path.is_file():
            problems[relative] = "missing"
        elif sha256_file(path) != expected:
            problems[relative] = f"does not match its sha256 in {MANIFEST_NAME}"
        else:
            problems[relative] = None
    return problems


def verify_files(folder: str | Path, manifest: PackageManifest) -> None:
    """Check every listed file's sha256; PackageError naming each missing or changed file."""
    problems = [f"{f} {p}" for f, p in file_problems(folder, manifest).items() if p is not None]
    if ONNX_NAME not in manifest.files:
        problems.append(f"the manifest lists no {ONNX_NAME}")
    if problems:
        raise PackageError(
            f"{folder}: refusing a damaged or tampered package: {'; '.join(problems)}"
        )


def load_package(folder: str | Path) -> ModelPackage:
    """Read and verify a package folder (every sha256) before anything uses its files."""
    folder = Path(folder)
    manifest = read_package_manifest(folder)
    verify_files(folder, manifest)
    return ModelPackage(folder, manifest)


def write_package_manifest(folder: str | Path, manifest: PackageManifest) -> PackageManifest:
    """Hash every file in `folder` (but the manifest) into `manifest.files`, then write it.

    Written to a temporary file and renamed, so a reader never sees half a manifest.
    """
    folder = Path(folder)
    manifest.files = {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith(".")
    }
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST_NAME)
    return manifest


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key for version folders: numbers numerically, after any non-numeric names."""
    return (1, int(version)) if version.isdigit() else (0, version)


def find_packages(root: str | Path) -> dict[str, list[Path]]:
    """Model name -> its version folders under a repository root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise PackageError(f"model repository {root} is not a folder")
    found: dict[str, list[Path]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = [v for v in model_dir.iterdir() if (v / MANIFEST_NAME).is_file()]
        if versions:
            found[model_dir.name] = sorted(versions, key=lambda v: version_key(v.name))
    return found


def resolve_package(path: str | Path) -> Path:
    """A package folder from `models/NAME/VERSION` or `models/NAME` (its latest version)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    versions: Sequence[Path] = (
        [v for v in path.iterdir() if (v / MANIFEST_NAME).is_file()] if path.is_dir() else []
    )
    if not versions:
        raise PackageError(
            f"{path} is neither a model package (no {MANIFEST_NAME}) nor a model folder "
            "with version subfolders"
        )
    return max(versions, key=lambda v: version_key(v.name))
