"""The view-subset accuracy table: its subsets, look-ups, and its place in the package manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mplstm.core.package import read_package_manifest, write_package_manifest
from mplstm.core.view_subsets import SubsetAccuracy, ViewSubsetTable, view_subsets

REPO = Path(__file__).resolve().parents[2]
TABLE = ViewSubsetTable(
    data="models/examples/lipreading/manifest.jsonl",
    split="test",
    clips=20,
    runtime="onnxruntime",
    subsets=(
        SubsetAccuracy(("front",), 0.6),
        SubsetAccuracy(("side",), 0.3),
        SubsetAccuracy(("front", "side"), 0.95),
    ),
)


def test_view_subsets_list_singles_then_pairs_then_all() -> None:
    subsets = view_subsets(4)
    assert len(subsets) == 15 and subsets[:4] == [(0,), (1,), (2,), (3,)]
    assert subsets[-1] == (0, 1, 2, 3)
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)


def test_accuracy_is_looked_up_by_exactly_the_views_in_any_order() -> None:
    assert TABLE.accuracy(["side", "front"]) == 0.95
    assert TABLE.accuracy(("side",)) == 0.3
    assert TABLE.accuracy(["front", "top"]) is None
    assert TABLE.accuracy([]) is None


def test_table_round_trips_through_json() -> None:
    assert ViewSubsetTable.from_dict(json.loads(json.dumps(TABLE.to_dict()))) == TABLE


@pytest.mark.parametrize("task", ["lipreading", "identity"])
def test_a_manifest_keeps_its_table_and_one_without_reads_as_not_measured(
    task: str, tmp_path: Path
) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    demo = read_package_manifest(REPO / "models" / f"demo-{task}" / "1")
    demo.view_accuracy = None
    write_package_manifest(folder, demo)
    assert read_package_manifest(folder).view_accuracy is None
    assert read_package_manifest(folder).expected_accuracy(demo.view_names) is None
    demo.view_accuracy = TABLE
    write_package_manifest(folder, demo)
    again = read_package_manifest(folder)
    assert again.view_accuracy == TABLE
    assert again.expected_accuracy(["front"]) == 0.6
