"""The fused CPU kernel of the MP-LSTM recurrence: built by the Makefile, equal to eager."""

from __future__ import annotations

import pytest
import torch

from mplstm.training import cell_cpu
from mplstm.training.cell import MPLSTM


def test_the_kernel_is_built_and_loads() -> None:
    assert cell_cpu.library_path().exists(), (
        "make venv builds it: python -m mplstm.training.cell_cpu build"
    )
    assert cell_cpu.available()


@pytest.mark.parametrize(
    "options",
    [{}, {"bidirectional": True, "num_layers": 2}, {"recurrent_activation": "hard_sigmoid"}],
    ids=["plain", "bidirectional_two_layers", "hard_sigmoid"],
)
def test_fp32_inference_matches_the_eager_recurrence_with_masks_and_lengths(options: dict) -> None:
    torch.manual_seed(0)
    layer = MPLSTM(32, 48, 5, **options).eval()
    x = torch.randn(6, 17, 5, 32)
    mask = torch.rand(6, 5) > 0.4
    mask[:, 2] = True
    lengths = torch.tensor([17, 1, 9, 17, 4, 12])
    with torch.no_grad():
        fused = layer(x, mask, lengths)
        with cell_cpu.disabled():
            eager = layer(x, mask, lengths)
    torch.testing.assert_close(fused[0], eager[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(fused[1][0], eager[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(fused[1][1], eager[1][1], rtol=0, atol=1e-5)


def test_training_keeps_the_differentiable_eager_path() -> None:
    layer = MPLSTM(4, 6, 3)
    x = torch.randn(2, 5, 3, 4)
    assert not cell_cpu.applies(x, *layer.parameters())
    out, _ = layer(x)
    out.sum().backward()
    assert layer.weight_hh_l0.grad is not None and layer.weight_hh_l0.grad.abs().sum() > 0


def test_tracing_for_export_keeps_the_eager_path() -> None:
    layer = MPLSTM(4, 6, 3).eval()
    x = torch.randn(2, 5, 3, 4)
    with torch.no_grad():
        traced = torch.jit.trace(layer, (x,), check_trace=False)
    assert "mplstm_cpu" not in str(traced.graph)


def test_a_missing_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(cell_cpu.KernelBuildError, match="g\\+\\+ not found"):
        cell_cpu.build(force=True)
    assert cell_cpu.library_path().exists()
