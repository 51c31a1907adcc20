"""The committed demo packages: intact, small, and as accurate as their manifests say."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mplstm.core.package import ONNX_NAME, load_package
from mplstm.export.package import evaluate_onnx

ROOT = Path(__file__).resolve().parents[2]
DEMOS = {
    "demo-lipreading": "lipreading",
    "demo-lipreading-live": "lipreading",
    "demo-identity": "identity",
}
MAX_PACKAGE_BYTES = 20 * 2**20


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_package_loads_with_matching_hashes_and_is_small(name: str) -> None:
    package = load_package(ROOT / "models" / name / "1")
    assert package.manifest.task == DEMOS[name]
    assert package.manifest.parity["passed"]
    size = sum(p.stat().st_size for p in package.path.iterdir())
    assert size <= MAX_PACKAGE_BYTES


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_package_scores_its_example_clips_at_the_accuracy_its_manifest_records(
    name: str,
) -> None:
    package = load_package(ROOT / "models" / name / "1")
    recorded = package.manifest.training["evaluation"]
    examples = ROOT / "models" / "examples" / DEMOS[name] / "manifest.jsonl"
    measured = evaluate_onnx(
        package.path / ONNX_NAME,
        package.manifest.preprocess_config(),
        package.manifest.labels,
        examples,
        "test",
    )
    assert measured["clips"] == recorded["clips"] > 0
    assert measured["correct"] == recorded["correct"]
    # Better than chance by a margin: the package is a trained model, not an initialisation.
    assert measured["accuracy"] >= 2.0 / len(package.manifest.labels)


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_package_records_every_view_subset_on_its_example_clips(name: str) -> None:
    """The table behind `expected_accuracy`: every subset, measured on the example clips;
    with every view it agrees with the evaluation recorded at export."""
    manifest = load_package(ROOT / "models" / name / "1").manifest
    table = manifest.view_accuracy
    assert table is not None
    assert table.data == f"models/examples/{DEMOS[name]}/manifest.jsonl"
    assert (table.split, table.clips) == ("test", manifest.training["evaluation"]["clips"])
    views = len(manifest.view_names)
    assert sorted(len(s.views) for s in table.subsets) == sorted(
        k for k in range(1, views + 1) for _ in range(math.comb(views, k))
    )
    everything = manifest.expected_accuracy(manifest.view_names)
    assert everything == manifest.training["evaluation"]["accuracy"]


def test_the_live_demo_streams_a_step_model_that_matches_its_whole_clip_model() -> None:
    package = load_package(ROOT / "models" / "demo-lipreading-live" / "1")
    assert package.manifest.live and package.manifest.preprocess.fps == 12.5
    parity = package.manifest.parity["step_model"]
    assert parity["passed"] and {c["chunk"] for c in parity["cases"]} == {1, 3, 7}
