"""Identity packages with an embedding: the `embedding` output, its parity, open-set thresholds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mplstm.cli import main as cli_main
from mplstm.core.package import EMBEDDING_OUTPUT, MANIFEST_NAME, ONNX_NAME, TRITON_CONFIG_NAME
from mplstm.core.synth import SynthConfig, generate
from mplstm.export.check import check_package
from mplstm.export.package import ExportError, OpenSetOptions, build_package, random_inputs
from mplstm.training.checkpoint import load_model

TINY_VIEWS = ("front", "left90", "right30")
# People 300..303 in the tiny checkpoints' views: never among their classes.
UNSEEN = SynthConfig(
    task="identity", speakers=4, first_speaker=300, words=1, views=3, clips_per_pair=3,
    size=(32, 32), seed=2, split="test",
)  # fmt: skip


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unseen")
    generate(UNSEEN, out, workers=1, progress=False)
    return out / "manifest.jsonl"


@pytest.fixture(scope="module")
def identity_checkpoint(tiny_checkpoint: Callable[..., Path]) -> Path:
    return tiny_checkpoint("mplstm", embedding_size=8, labels=("s001", "s002", "s003"))


def test_identity_package_outputs_an_embedding_matching_pytorch(
    identity_checkpoint: Path, tmp_path: Path
) -> None:
    package = build_package(identity_checkpoint, tmp_path / "id" / "1", fp16=True)
    manifest = package.manifest
    assert [s.name for s in manifest.outputs] == ["logits", "probabilities", EMBEDDING_OUTPUT]
    assert manifest.embedding_size == 8 and manifest.open_set["embedding_size"] == 8
    assert manifest.parity["embedding"]["passed"]
    assert f'name: "{EMBEDDING_OUTPUT}"' in (package.path / TRITON_CONFIG_NAME).read_text()
    # Another batch size than traced, masked views: the served graph gives unit vectors
    # equal to PyTorch's embedding.
    clip, mask = random_inputs(_case(5), len(TINY_VIEWS), 1, 32, 32, seed=7)
    session = ort.InferenceSession(
        str(package.path / ONNX_NAME), providers=["CPUExecutionProvider"]
    )
    got = session.run([EMBEDDING_OUTPUT], {"clip": clip, "view_mask": mask})[0]
    model, _ = load_model(identity_checkpoint)
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(clip), torch.from_numpy(mask))[1].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    rows = {r.item: r for r in check_package(package.path)}
    assert rows[f"model.fp16.onnx {EMBEDDING_OUTPUT}"].status == "ok"


def _case(batch: int):
    from mplstm.export.package import ParityCase

    return ParityCase(batch, 8, masked=True)


def test_open_set_thresholds_are_measured_on_unseen_people_into_the_manifest(
    identity_checkpoint: Path, unseen: Path, tmp_path: Path
) -> None:
    out = tmp_path / "id" / "1"
    argv = ["export", str(identity_checkpoint), "--out", str(out), "--open-set-data", str(unseen)]
    assert cli_main([*argv, "--enrol-clips", "1"]) == 0
    section = json.loads((out / MANIFEST_NAME).read_text())["open_set"]
    thresholds = {t["far"]: t["threshold"] for t in section["thresholds"]}
    assert set(thresholds) == {0.01, 0.001} and thresholds[0.001] >= thresholds[0.01]
    assert section["evaluation"]["gallery_people"] == 2
    assert section["evaluation"]["impostor_people"] == 2
    assert section["score"] == "cosine"


def test_thresholds_from_people_seen_in_training_are_refused(
    tiny_checkpoint: Callable[..., Path], unseen: Path, tmp_path: Path
) -> None:
    seen = tiny_checkpoint("mplstm", embedding_size=8, labels=("s300", "s999"))
    with pytest.raises(ExportError, match="never seen in training"):
        build_package(seen, tmp_path / "m" / "1", open_set=OpenSetOptions(unseen))
    assert not (tmp_path / "m" / "1").exists()


def test_models_without_an_embedding_keep_two_outputs(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    package = build_package(tiny_checkpoint(), tmp_path / "m" / "1")
    assert [s.name for s in package.manifest.outputs] == ["logits", "probabilities"]
    assert package.manifest.embedding_size == 0 and package.manifest.open_set == {}
