"""`mplstm export --check PACKAGE`: are the files intact, and do the runtimes agree?

Every file's sha256 against the manifest; model.onnx runs in ONNX Runtime on random
clips of the package's shapes (outputs finite, probabilities summing to 1); the fp16
model and every TensorRT engine are compared with model.onnx on the same inputs. A
TensorRT engine is checked only on a host with TensorRT and the engine's GPU; elsewhere
its row says why it was skipped. Tolerances: `mplstm.inference.parity.TOLERANCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mplstm.core.package import (
    EMBEDDING_OUTPUT,
    ONNX_FP16_NAME,
    ONNX_NAME,
    EngineInfo,
    ModelPackage,
    PackageError,
    PackageManifest,
    file_problems,
    read_package_manifest,
)
from mplstm.export.package import ParityCase, onnx_session, parity_cases, random_inputs
from mplstm.inference.parity import TOLERANCES, Parity, compare, compare_embeddings


@dataclass(frozen=True)
class CheckRow:
    """One line of the check table."""

    item: str
    status: str  # "ok" | "FAILED" | "skipped"
    detail: str


def _inputs(package: ModelPackage) -> list[tuple[ParityCase, np.ndarray, np.ndarray]]:
    manifest = package.manifest
    pre = manifest.preprocess
    cases = parity_cases(pre.frames, manifest.frames_range)
    shape = (len(manifest.view_names), pre.channels, pre.height, pre.width)
    return [(c, *random_inputs(c, *shape, seed=100 + i)) for i, c in enumerate(cases)]


def _hash_rows(folder: Path, manifest: PackageManifest) -> list[CheckRow]:
    return [
        CheckRow(relative, "FAILED", problem)
        if problem
        else CheckRow(relative, "ok", f"sha256 {manifest.files[relative][:12]}…")
        for relative, problem in file_problems(folder, manifest).items()
    ]


def _compare(
    item: str,
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    reference: list[np.ndarray],
    inputs: list[tuple[ParityCase, np.ndarray, np.ndarray]],
    tolerance: float,
) -> CheckRow:
    """Run `run` on every input and compare its logits with the fp32 ONNX reference."""
    outputs = [run(clip, mask) for _, clip, mask in inputs]
    parity = compare(zip(reference, outputs, strict=True), tolerance)
    return CheckRow(item, "ok" if parity.passed else "FAILED", parity.describe())


def engine_parity(
    folder: Path,
    engine: EngineInfo,
    clips: list[tuple[np.ndarray, np.ndarray]],
) -> Parity:
    """A package's TensorRT engine against its model.onnx (fp32, CPU) on `clips` batches.

    TensorRTError where the engine cannot run on this host.
    """
    from mplstm.inference.tensorrt import EngineRunner, select_engine

    select_engine((engine,), precision=engine.precision)  # fits this host, else says why
    session = onnx_session(folder / ONNX_NAME)
    runner = EngineRunner(folder / engine.file)
    try:
        pairs = [
            (
                session.run(["logits"], {"clip": clip, "view_mask": mask})[0],
                runner({"clip": clip, "view_mask": mask})["logits"],
            )
            for clip, mask in clips
        ]
    finally:
        runner.close()
    return compare(pairs, TOLERANCES[f"tensorrt-{engine.precision}"])


def _engine_row(
    package: ModelPackage,
    engine: EngineInfo,
    inputs: list[tuple[ParityCase, np.ndarray, np.ndarray]],
) -> CheckRow:
    item = f"{engine.file} ({engine.precision}, {'plugin' if engine.plugin else 'inlined body'})"
    try:
        parity = engine_parity(package.path, engine, [(c, m) for _, c, m in inputs])
    except Exception as exc:  # TensorRT absent, no GPU, or another GPU/TensorRT version
        return CheckRow(item, "skipped", f"{type(exc).__name__}: {exc}")
    return CheckRow(item, "ok" if parity.passed else "FAILED", parity.describe())


def check_package(folder: str | Path) -> list[CheckRow]:
    """The check table for a package folder (hashes first; runtimes only if files are intact)."""
    folder = Path(folder)
    manifest = read_package_manifest(folder)
    rows = _hash_rows(folder, manifest)
    if any(r.status == "FAILED" for r in rows):
        return rows
    if ONNX_NAME not in manifest.files:
        raise PackageError(f"{folder}: the manifest lists no {ONNX_NAME}")
    package = ModelPackage(folder, manifest)  # every file was just verified
    inputs = _inputs(package)
    session = onnx_session(folder / ONNX_NAME)
    reference = []
    healthy = True
    for _, clip, mask in inputs:
        logits, probs = session.run(["logits", "probabilities"], {"clip": clip, "view_mask": mask})
        reference.append(logits)
        healthy &= bool(np.isfinite(logits).all() and np.allclose(probs.sum(-1), 1, atol=1e-5))
    sizes = ", ".join(f"B={c.batch} T={c.frames}" for c, _, _ in inputs)
    rows.append(
        CheckRow(
            f"{ONNX_NAME} in onnxruntime {ort.__version__}",
            "ok" if healthy else "FAILED",
            f"{sizes}: outputs finite, probabilities sum to 1"
            if healthy
            else "non-finite outputs or probabilities not summing to 1",
        )
    )
    if ONNX_FP16_NAME in manifest.files:
        fp16 = onnx_session(folder / ONNX_FP16_NAME)
        rows.append(
            _compare(
                ONNX_FP16_NAME,
                lambda c, m: fp16.run(["logits"], {"clip": c, "view_mask": m})[0],
                reference,
                inputs,
                TOLERANCES["fp16"],
            )
        )
        if manifest.embedding_size:
            rows.append(_embedding_row(ONNX_FP16_NAME, session, fp16, inputs))
    rows.extend(_engine_row(package, e, inputs) for e in manifest.engines)
    return rows


def _embedding_row(
    item: str,
    reference: ort.InferenceSession,
    other: ort.InferenceSession,
    inputs: list[tuple[ParityCase, np.ndarray, np.ndarray]],
) -> CheckRow:
    """The fp16 model's `embedding` output against model.onnx's on the same inputs."""

    def run(session: ort.InferenceSession, clip: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run([EMBEDDING_OUTPUT], {"clip": clip, "view_mask": mask})[0]

    parity = compare_embeddings(
        ((run(reference, c, m), run(other, c, m)) for _, c, m in inputs),
        TOLERANCES["embedding-fp16"],
    )
    return CheckRow(
        f"{item} {EMBEDDING_OUTPUT}", "ok" if parity.passed else "FAILED", parity.describe()
    )


def format_table(rows: list[CheckRow]) -> str:
    """The rows as an aligned text table."""
    width = max(len(r.item) for r in rows)
    return "\n".join(f"{r.item:<{width}}  {r.status:<7}  {r.detail}" for r in rows)
