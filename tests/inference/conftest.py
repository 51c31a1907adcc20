"""Inference fixtures: a tiny exported package (3 views, missing views allowed) and clips for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.synth import SynthConfig, generate


@pytest.fixture(scope="session")
def package_dir(
    tiny_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """models/tiny/1 of the session's tiny untrained MP-LSTM."""
    from mplstm.export.package import build_package

    out = tmp_path_factory.mktemp("inference-repo") / "tiny" / "1"
    return build_package(tiny_checkpoint("mplstm"), out).path


@pytest.fixture(scope="session")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[ClipRecord]:
    """4 clips with the package's views (front, left90, right30) of 32x32."""
    out = tmp_path_factory.mktemp("inference-synth")
    config = SynthConfig(
        task="lipreading", speakers=1, words=2, views=3, clips_per_pair=2, size=(32, 32)
    )
    generate(config, out, workers=1, progress=False)
    return read_manifest(out / "manifest.jsonl")
