"""One comparison of two runtimes' logits: the tolerance, and class flips only in near-ties."""

from __future__ import annotations

import numpy as np
import pytest

from mplstm.inference.parity import TOLERANCES, compare, compare_embeddings


def test_logits_within_the_tolerance_pass() -> None:
    expected = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
    parity = compare([(expected, expected + 5e-5)], TOLERANCES["fp32"])
    assert parity.passed and parity.argmax_equal and parity.samples == 2
    assert parity.max_abs_diff == pytest.approx(5e-5, rel=1e-2)


def test_a_difference_beyond_the_tolerance_fails() -> None:
    expected = np.zeros((1, 3), np.float32)
    assert not compare([(expected, expected + 1e-3)], TOLERANCES["fp32"]).passed


def test_a_class_flip_in_a_near_tie_is_precision_but_a_clear_flip_fails() -> None:
    tolerance = TOLERANCES["fp16"]
    tie = np.array([[1.0, 1.0 + tolerance / 2]], np.float32)
    flipped = tie[:, ::-1].copy()
    near = compare([(tie, flipped)], tolerance)
    assert near.passed and near.argmax_agreement == 0.0
    clear = np.array([[0.0, 10.0]], np.float32)
    far = compare([(clear, clear[:, ::-1].copy())], 1.0)
    assert far.flips_beyond_tolerance == 1 and not far.passed


def test_tolerances_cover_every_comparison_the_project_makes() -> None:
    models = {"fp32", "fp16", "tensorrt-fp32", "tensorrt-fp16"}
    layers = {"kernel-fp32", "kernel-fp16", "plugin-fp32", "plugin-fp16"}
    embeddings = {f"embedding-{m}" for m in models}
    assert set(TOLERANCES) == models | layers | embeddings
    assert TOLERANCES["fp32"] < TOLERANCES["tensorrt-fp32"] < TOLERANCES["fp16"]
    assert TOLERANCES["kernel-fp32"] < TOLERANCES["plugin-fp32"] < TOLERANCES["kernel-fp16"]
    assert TOLERANCES["embedding-fp32"] < TOLERANCES["embedding-tensorrt-fp32"]
    assert TOLERANCES["embedding-tensorrt-fp32"] < TOLERANCES["embedding-fp16"]


def test_embeddings_pass_within_the_tolerance_and_report_the_least_cosine() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 8)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    close = compare_embeddings([(reference, reference + 5e-5)], TOLERANCES["embedding-fp32"])
    assert close.passed and close.samples == 4 and close.min_cosine > 0.999
    other = compare_embeddings([(reference, -reference)], TOLERANCES["embedding-fp16"])
    assert not other.passed and other.min_cosine == pytest.approx(-1, abs=1e-5)
    with pytest.raises(ValueError, match="shape"):
        compare_embeddings([(reference, reference[:, :4])], 1e-4)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        compare([(np.zeros((2, 3)), np.zeros((2, 4)))], 1e-4)
