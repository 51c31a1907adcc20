"""Do two runtimes agree? The one comparison of logits, and the one tolerance table.

Export compares ONNX Runtime with PyTorch before it writes a package, the fp16 model
and every TensorRT engine with model.onnx; `mplstm export --check` repeats the last
two; the kernel tests and the GPU check kit hold one layer to the `kernel-*` and
`plugin-*` rows. Whole models use `compare` with a tolerance from `TOLERANCES`: the largest
|logits difference| must stay within it, and the predicted class may differ only
where the reference's top two logits are within twice the tolerance of each other (a
near-tie that the lower precision may break either way, not a bug).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Max absolute difference against the fp32 reference, per comparison. Whole models
# (logits against model.onnx or PyTorch):
TOLERANCES: dict[str, float] = {
    # ONNX Runtime fp32 against PyTorch eager: the same arithmetic in another order.
    "fp32": 1e-4,
    # model.fp16.onnx: fp16 keeps about 3 significant digits through the recurrence.
    "fp16": 5e-2,
    # A TensorRT fp32 engine (TF32 off): other kernels and fusions, fp32 throughout.
    "tensorrt-fp32": 1e-3,
    "tensorrt-fp16": 5e-2,
    # One MP-LSTM layer (outputs and final state) against the PyTorch layer: the Triton
    # kernel (interpreter tests, the GPU check kit) and the plugin inside an engine.
    # fp32: the kernel's arithmetic is fp32 with IEEE dots (no TF32).
    "kernel-fp32": 1e-5,
    # fp16 inputs, weights and state between steps, fp32 arithmetic; set at U = 48, T = 6
    # with the layer's own init (outputs up to ~1.7): errors grow with the output range.
    "kernel-fp16": 5e-3,
    # The GPU sums in another order than the CPU layer; the interpreter holds 1e-5.
    "plugin-fp32": 1e-4,
    "plugin-fp16": 5e-3,
    # The `embedding` output of identity models (unit vectors, DESIGN.md §3), against the
    # same reference as the logits; its values are ~30x smaller than the logits' (scale s).
    "embedding-fp32": 1e-4,
    "embedding-fp16": 1e-2,
    "embedding-tensorrt-fp32": 1e-3,
    "embedding-tensorrt-fp16": 1e-2,
}


@dataclass(frozen=True)
class Parity:
    """How far one runtime's logits are from the reference's, over every sample compared."""

    tolerance: float
    samples: int
    max_abs_diff: float  # logits
    argmax_agreement: float  # fraction of samples with the same predicted class
    flips_beyond_tolerance: int  # different class where the reference's top two are far apart

    @property
    def passed(self) -> bool:
        """Within the tolerance, and no class flip outside a near-tie."""
        return self.max_abs_diff <= self.tolerance and self.flips_beyond_tolerance == 0

    @property
    def argmax_equal(self) -> bool:
        """Every sample predicts the same class."""
        return self.argmax_agreement == 1.0

    def describe(self) -> str:
        """One line for a table or a log."""
        return (
            f"max |logits diff| {self.max_abs_diff:.2g} (tolerance {self.tolerance:g}), "
            f"argmax agreement {self.argmax_agreement:.1%} over {self.samples} samples, "
            f"{self.flips_beyond_tolerance} flip(s) beyond the tolerance"
        )


def compare(pairs: Iterable[tuple[np.ndarray, np.ndarray]], tolerance: float) -> Parity:
    """Compare (reference logits, logits) batches [B, classes] with `tolerance`."""
    worst, agree, samples, flips = 0.0, 0, 0, 0
    for expected, got in pairs:
        expected = np.asarray(expected, np.float32)
        got = np.asarray(got, np.float32)
        if expected.shape != got.shape:
            raise ValueError(f"logits of shape {got.shape} against {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max(initial=0.0)))
        same = got.argmax(-1) == expected.argmax(-1)
        top2 = np.sort(expected, axis=-1)[:, -2:]
        clear = top2[:, -1] - top2[:, 0] > 2 * tolerance
        agree += int(same.sum())
        flips += int((clear & ~same).sum())
        samples += len(expected)
    return Parity(tolerance, samples, worst, agree / samples if samples else 1.0, flips)


@dataclass(frozen=True)
class EmbeddingParity:
    """How far one runtime's unit embeddings are from the reference's."""

    tolerance: float
    samples: int
    max_abs_diff: float
    min_cosine: float  # the least cosine between a sample's two embeddings

    @property
    def passed(self) -> bool:
        """Every component within the tolerance."""
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        """One line for a table or a log."""
        return (
            f"embedding: max |diff| {self.max_abs_diff:.2g} (tolerance {self.tolerance:g}), "
            f"least cosine {self.min_cosine:.6f} over {self.samples} samples"
        )


def compare_embeddings(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], tolerance: float
) -> EmbeddingParity:
    """Compare (reference, other) embedding batches [B, E] with `tolerance`."""
    worst, least, samples = 0.0, 1.0, 0
    for expected, got in pairs:
        expected = np.asarray(expected, np.float32)
        got = np.asarray(got, np.float32)
        if expected.shape != got.shape:
            raise ValueError(f"embeddings of shape {got.shape} against {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max(initial=0.0)))
        if len(expected):
            least = min(least, float((expected * got).sum(-1).min()))
        samples += len(expected)
    return EmbeddingParity(tolerance, samples, worst, least)
