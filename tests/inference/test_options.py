"""Where inference runs: one rule for the service's video route and the batch scorer."""

from __future__ import annotations

import pytest

from mplstm.inference.options import Placement, PlacementError, resolve_placement


@pytest.mark.parametrize(
    ("choice", "on_gpu", "workers", "placed"),
    [
        (Placement.AUTO, False, 2, Placement.WORKERS),
        (Placement.AUTO, True, 2, Placement.MAIN),
        (Placement.AUTO, False, 0, Placement.MAIN),
        (Placement.MAIN, False, 2, Placement.MAIN),
        (Placement.WORKERS, False, 2, Placement.WORKERS),
    ],
)
def test_auto_places_inference_in_the_workers_only_on_the_cpu_with_workers(
    choice: Placement, on_gpu: bool, workers: int, placed: Placement
) -> None:
    assert resolve_placement(choice, on_gpu=on_gpu, workers=workers, what="X") is placed


def test_workers_on_a_gpu_backend_is_refused_with_what_to_set() -> None:
    with pytest.raises(
        PlacementError, match=r"MPLSTM_VIDEO_INFERENCE=workers.*MPLSTM_VIDEO_INFERENCE=auto or main"
    ):
        resolve_placement(Placement.WORKERS, on_gpu=True, workers=2, what="MPLSTM_VIDEO_INFERENCE")


def test_workers_without_decode_workers_is_refused_naming_the_flag() -> None:
    with pytest.raises(PlacementError, match="--inference=workers needs --decode-workers >= 1"):
        resolve_placement(Placement.WORKERS, on_gpu=False, workers=0, what="--inference")


def test_an_unknown_placement_is_refused() -> None:
    with pytest.raises(ValueError, match="'batcher' is not a valid Placement"):
        resolve_placement("batcher", on_gpu=False, workers=1, what="X")  # type: ignore[arg-type]
