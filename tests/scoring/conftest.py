"""Scoring fixtures: one tiny exported package and one small synthetic data set per session.

The package is the session's tiny untrained MP-LSTM (3 views front/left90/right30, labels
w00..w03, 8 frames of 32x32 gray) exported with `build_package`; the clips come from
`mplstm.core.synth` with the same view names. Helpers to run `mplstm score`:
scoring_helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.package import ModelPackage, load_package, resolve_package
from mplstm.core.synth import SynthConfig, generate
from mplstm.inference.backend import Backend
from mplstm.inference.options import BackendOptions
from mplstm.inference.select import open_backend


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint: Callable[..., Path]) -> Path:
    return tiny_checkpoint("mplstm")


@pytest.fixture(scope="session")
def package_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny/1, exported from the tiny checkpoint; `--model` takes models/tiny."""
    from mplstm.export.package import build_package

    models = tmp_path_factory.mktemp("repo") / "models"
    build_package(checkpoint, models / "tiny" / "1")
    return models / "tiny"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 clips (2 speakers x 4 words x 2), 3 views of 32x32, all in the test split."""
    out = tmp_path_factory.mktemp("synth")
    config = SynthConfig(
        task="lipreading",
        speakers=2,
        words=4,
        views=3,
        clips_per_pair=2,
        size=(32, 32),
        split="test",
    )
    generate(config, out, workers=1, progress=False)
    return out / "manifest.jsonl"


@pytest.fixture(scope="session")
def records(dataset: Path) -> list[ClipRecord]:
    return read_manifest(dataset)


@pytest.fixture(scope="module")
def package(package_dir: Path) -> ModelPackage:
    return load_package(resolve_package(package_dir))


@pytest.fixture(scope="module")
def backend(package: ModelPackage) -> Iterator[Backend]:
    """ONNX Runtime on the CPU, one thread."""
    backend = open_backend(package, BackendOptions("onnxruntime", "cpu", threads=1))
    yield backend
    backend.close()
