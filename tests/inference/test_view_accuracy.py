"""The view-subset table: measured as served (views absent), added to a package or written
by export, and read back by the package's `expected_accuracy`."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mplstm.cli import main
from mplstm.core.manifest import read_manifest
from mplstm.core.package import ONNX_NAME, load_package
from mplstm.core.preprocess import load_clip
from mplstm.core.synth import SynthConfig, generate
from mplstm.core.view_subsets import view_subsets
from mplstm.inference.view_accuracy import add_view_accuracy

HELD_OUT = SynthConfig(
    task="lipreading", speakers=1, words=4, views=3, clips_per_pair=2, size=(32, 32), split="test"
)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 clips of the tiny package's views and labels, all in the test split."""
    out = tmp_path_factory.mktemp("held-out")
    generate(HELD_OUT, out, workers=1, progress=False)
    return out / "manifest.jsonl"


@pytest.fixture
def package_copy(package_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / "tiny" / "1"))


def _served_accuracy(package: Path, manifest: Path, present: tuple[str, ...]) -> float:
    """The model run directly on clips decoded with only `present` sent, the rest absent."""
    loaded = load_package(package)
    # Views left out reach the model as absent (zeros, masked), whatever the model allows.
    config = dataclasses.replace(loaded.manifest.preprocess_config(), allow_missing_views=True)
    session = ort.InferenceSession(str(loaded.file(ONNX_NAME)), providers=["CPUExecutionProvider"])
    hits = []
    for record in read_manifest(manifest):
        views = {n: (record.views[n] if n in present else None) for n in config.view_names}
        clip = load_clip(views, config)
        logits = session.run(
            ["logits"], {"clip": clip.frames[None], "view_mask": clip.view_mask[None]}
        )
        hits.append(loaded.manifest.labels[int(logits[0].argmax())] == record.label)
    return float(np.mean(hits))


def test_each_subset_accuracy_is_the_models_with_only_those_views_sent(
    package_copy: Path, held_out: Path
) -> None:
    files = load_package(package_copy).manifest.files
    package = add_view_accuracy(package_copy, held_out, "test")
    table = package.manifest.view_accuracy
    assert table is not None and table.clips == 8 and table.split == "test"
    names = package.manifest.view_names
    assert [s.views for s in table.subsets] == [
        tuple(names[v] for v in subset) for subset in view_subsets(len(names))
    ]
    for subset in table.subsets:
        assert subset.accuracy == _served_accuracy(package_copy, held_out, subset.views)
    # The package stays intact: the same files with the same hashes, verified on load.
    assert load_package(package_copy).manifest.files == files


def test_export_with_held_out_clips_writes_the_same_table(
    tiny_checkpoint: Callable[..., Path], held_out: Path, tmp_path: Path
) -> None:
    from mplstm.export.package import build_package

    exported = build_package(
        tiny_checkpoint("mplstm"), tmp_path / "tiny" / "1", eval_data=held_out, eval_split="test"
    )
    table = exported.manifest.view_accuracy
    assert table is not None
    again = add_view_accuracy(
        Path(shutil.copytree(exported.path, tmp_path / "again" / "1")), held_out, "test"
    )
    assert again.manifest.view_accuracy is not None
    assert [(s.views, s.accuracy) for s in table.subsets] == [
        (s.views, s.accuracy) for s in again.manifest.view_accuracy.subsets
    ]
    everything = exported.manifest.expected_accuracy(exported.manifest.view_names)
    assert everything == exported.manifest.training["evaluation"]["accuracy"]


def test_cli_adds_the_table_and_says_what_is_missing(
    package_copy: Path, held_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--view-accuracy", str(package_copy)]) == 2
    assert "needs --eval-data" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                "--view-accuracy",
                str(package_copy),
                "--eval-data",
                str(held_out),
                "--eval-split",
                "val",
            ]
        )
        == 2
    )
    assert "no clip in split 'val'" in capsys.readouterr().err
    assert load_package(package_copy).manifest.view_accuracy is None
    argv = ["export", "--view-accuracy", str(package_copy.parent), "--eval-data", str(held_out)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy of 7 view subsets on 8 clips" in out and "3 view(s)" in out
    assert load_package(package_copy).manifest.view_accuracy is not None


def test_a_live_package_whose_clips_differ_in_length_gets_each_subsets_accuracy(
    tmp_path: Path,
) -> None:
    """A live model samples at a fixed rate: clips of different durations batch apart."""
    root = Path(__file__).resolve().parents[2]
    live = Path(shutil.copytree(root / "models" / "demo-lipreading-live" / "1", tmp_path / "1"))
    examples = root / "models" / "examples" / "lipreading" / "manifest.jsonl"
    config = load_package(live).manifest.preprocess_config()
    lengths = {load_clip(r.views, config).frames.shape[1] for r in read_manifest(examples)}
    assert len(lengths) > 1  # the case this test holds
    table = add_view_accuracy(live, examples, "test").manifest.view_accuracy
    assert table is not None and table.clips == 20
    for subset in (table.subsets[0], table.subsets[-1]):
        assert subset.accuracy == _served_accuracy(live, examples, subset.views)
