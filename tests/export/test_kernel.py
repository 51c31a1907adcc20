"""The MP-LSTM Triton kernel, with no GPU: Triton's interpreter on torch CPU tensors
(TRITON_INTERPRET=1, set by conftest.py) against the PyTorch layer, and PTX for sm_80 and
sm_90 from `triton.compile` with a GPUTarget.

Tolerances: fp32 1e-5 (absolute; the kernel does the layer's arithmetic in fp32, with
IEEE fp32 dots). fp16 5e-3 against the fp32 layer: fp16 inputs and weights, and an fp16
state between steps (h and c live in the fp16 outputs), with fp32 arithmetic; measured
max error 1.4e-3 at U = 48, T = 6 with the layer's own init (outputs up to ~1.7). Errors
grow with the output range (about 0.5% of it: 1.3e-2 with all weights in ±0.5).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from mplstm.export.kernel import KernelSpec, mplstm_layer_triton, mplstm_recurrence_triton
from mplstm.export.onnx_cell import (
    INPUTS,
    OUTPUTS,
    CellConfig,
    export_weights,
    single_layer_model,
)
from mplstm.export.ptx import compile_ptx
from mplstm.inference.parity import TOLERANCES
from mplstm.training.cell import MPLSTM, gate_vector, input_projection, prepare_gates, recurrence

# Five samples with uneven lengths and missing views (every sample keeps one view).
VIEW_MASK = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
LENGTHS = torch.tensor([6, 3, 1, 5, 4])
BATCH, STEPS, VIEWS = 5, 6, 3


def _layer(dim: int, hidden: int, seed: int = 0, spread: bool = True, **options) -> MPLSTM:
    """A layer with its own init, or (spread) every weight in ±0.5, peepholes included."""
    torch.manual_seed(seed)
    layer = MPLSTM(dim, hidden, VIEWS, **options).eval()
    if spread:
        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(-0.5, 0.5)
    return layer


def _node_weights(layer: MPLSTM, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """W, R, bias, peepholes in the mplstm::MPLSTM node's layout (onnx_cell.export_weights)."""
    params = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    weights = export_weights(
        params, 0, layer.bidirectional, layer.candidate_uses_forget_kernel, layer.peepholes
    )
    arrays = [weights.W, weights.R, weights.bias, weights.peepholes]
    return [None if a is None else torch.from_numpy(np.asarray(a)).to(dtype) for a in arrays]


def _run_node_kernel(
    layer: MPLSTM, x: torch.Tensor, dtype: torch.dtype, mask: torch.Tensor = VIEW_MASK
) -> tuple[torch.Tensor, ...]:
    w, r, bias, peep = _node_weights(layer, dtype)
    return mplstm_layer_triton(
        x.to(dtype),
        mask,
        LENGTHS,
        w,
        r,
        bias,
        peep,
        layer.bidirectional,
        layer.recurrent_activation,
    )


def _max_errors(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> list[float]:
    return [float((e.float() - g.float()).abs().max()) for e, g in zip(expected, got, strict=True)]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("hard", [False, True], ids=["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peepholes"])
def test_kernel_recurrence_matches_torch_recurrence_in_fp32(
    reverse: bool, hard: bool, peepholes: bool
) -> None:
    torch.manual_seed(1)
    dim, hidden = 8, 16
    x = torch.randn(BATCH, STEPS, VIEWS, dim)
    proj = prepare_gates(
        input_projection(
            x, torch.randn(VIEWS, 4 * hidden, dim) * 0.4, torch.randn(VIEWS, 4 * hidden)
        ),
        VIEW_MASK,
    )
    g2 = gate_vector(hidden, 1.0, 1.0, 2.0, 1.0, x)
    weight_hh_t = ((torch.randn(4 * hidden, hidden) * 0.4) * g2[:, None]).t().contiguous()
    peep = (
        torch.randn(4 * hidden) * gate_vector(hidden, 1.0, 1.0, 0.0, 1.0, x) if peepholes else None
    )
    valid = (torch.arange(STEPS)[:, None] < LENGTHS[None, :]).unsqueeze(-1)

    expected = recurrence(proj.clone(), weight_hh_t, peep, valid, reverse, hard)
    got = mplstm_recurrence_triton(proj, weight_hh_t, peep, valid, reverse, hard)

    assert [g.shape for g in got] == [e.shape for e in expected]
    assert max(_max_errors(expected, got)) < TOLERANCES["kernel-fp32"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bidirectional": True},
        {"bidirectional": True, "peepholes": True},
        # The authors' released configuration: hard sigmoid, candidate reads U_f.
        {"recurrent_activation": "hard_sigmoid", "candidate_uses_forget_kernel": True},
    ],
    ids=["forward", "bidirectional", "bidirectional_peepholes", "keras_compat"],
)
def test_node_kernel_matches_the_pytorch_layer_in_fp32(options: dict) -> None:
    # U = 48 > one 32-unit chunk and not a power of two: chunking and padding both run.
    layer = _layer(dim=20, hidden=48, **options)
    x = torch.randn(BATCH, STEPS, VIEWS, 20)
    with torch.no_grad():
        out, (h_n, c_n) = layer(x, VIEW_MASK, LENGTHS)

    got = _run_node_kernel(layer, x, torch.float32)

    assert max(_max_errors((out, h_n, c_n), got)) < TOLERANCES["kernel-fp32"]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_node_kernel_in_fp16_matches_the_fp32_layer_within_the_stated_tolerance(
    bidirectional: bool,
) -> None:
    # The layer's own init: trained-like magnitudes (outputs up to ~1.7 here).
    layer = _layer(dim=20, hidden=48, spread=False, bidirectional=bidirectional)
    x = torch.randn(BATCH, STEPS, VIEWS, 20)
    with torch.no_grad():
        out, (h_n, c_n) = layer(x, VIEW_MASK, LENGTHS)

    got = _run_node_kernel(layer, x, torch.float16)

    assert all(g.dtype == torch.float16 for g in got)
    assert max(_max_errors((out, h_n, c_n), got)) < TOLERANCES["kernel-fp16"]


def test_node_kernel_takes_the_onnx_node_inputs_in_order_and_matches_its_body_in_ort() -> None:
    """The plugin's contract is the node's: same inputs, order, layouts and outputs."""
    import onnxruntime as ort

    layer = _layer(dim=8, hidden=16, bidirectional=True)
    params = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    weights = export_weights(params, 0, bidirectional=True)
    model = single_layer_model(weights, CellConfig(VIEWS, bidirectional=True), 8)
    x = np.random.default_rng(0).standard_normal((BATCH, STEPS, VIEWS, 8)).astype(np.float32)
    feeds = {"X": x, "view_mask": VIEW_MASK.numpy(), "lengths": LENGTHS.numpy()}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(list(OUTPUTS), feeds)

    inputs = [feeds[name] for name in INPUTS[:3]] + weights.arrays()
    got = mplstm_layer_triton(
        *(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs), None, True, "sigmoid"
    )

    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g.numpy(), e, atol=TOLERANCES["kernel-fp32"], rtol=0)


def test_masked_view_input_does_not_reach_the_kernel_outputs() -> None:
    layer = _layer(dim=8, hidden=16, bidirectional=True)
    x = torch.randn(BATCH, STEPS, VIEWS, 8)
    noisy = x.clone()
    noisy.permute(0, 2, 1, 3)[~VIEW_MASK] = 1e3  # only the views the mask drops

    clean = _run_node_kernel(layer, x, torch.float32)
    dirty = _run_node_kernel(layer, noisy, torch.float32)

    for a, b in zip(clean, dirty, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_outputs_past_each_length_are_zero_and_final_state_is_at_each_end() -> None:
    layer = _layer(dim=8, hidden=16, bidirectional=True)
    x = torch.randn(BATCH, STEPS, VIEWS, 8)
    y, h_n, _ = _run_node_kernel(layer, x, torch.float32)
    for b, length in enumerate(LENGTHS.tolist()):
        assert torch.count_nonzero(y[b, length:]) == 0
        assert torch.count_nonzero(y[b, :length]) > 0
        # forward ends at its last step, reverse at step 0 (it starts at the row's end)
        torch.testing.assert_close(h_n[0, b], y[b, length - 1, :16], rtol=0, atol=0)
        torch.testing.assert_close(h_n[1, b], y[b, 0, 16:], rtol=0, atol=0)


def test_node_kernel_refuses_weights_of_another_shape() -> None:
    layer = _layer(dim=8, hidden=16)
    w, r, bias, _ = _node_weights(layer, torch.float32)
    with pytest.raises(ValueError, match="W must be"):
        mplstm_layer_triton(
            torch.randn(BATCH, STEPS, VIEWS, 9),
            VIEW_MASK,
            LENGTHS,
            w,
            r,
            bias,
            None,
            False,
            "sigmoid",
        )


# The serving size (DESIGN.md §2: U = 256, 3 views, 2048-d features), both directions.
SERVING_SPEC = KernelSpec(
    hidden_size=256, num_views=3, dtype=torch.float16, bidirectional=True, input_size=2048
)


@pytest.mark.parametrize("arch", [80, 90], ids=["sm_80", "sm_90"])
def test_kernel_compiles_to_ptx_for_the_target_without_a_gpu(arch: int) -> None:
    compiled = compile_ptx(SERVING_SPEC, arch)

    # sm_90 kernels target sm_90a (Hopper's arch-specific features).
    assert re.search(rf"^\.target sm_{arch}a?\b", compiled.ptx, re.MULTILINE)
    entry = re.search(rf"\.entry {compiled.name}\((.*?)\)", compiled.ptx, re.DOTALL)
    assert entry is not None and compiled.name == "mplstm_kernel"
    params = re.findall(r"\.param \.(u64|u32)", entry.group(1))
    # The node's 6 inputs, the int32 scalars B, T, D, the 3 outputs: the AOT convention.
    assert params[:12] == ["u64"] * 6 + ["u32"] * 3 + ["u64"] * 3
    # Fits the 48 KB a kernel gets without opting in to more shared memory.
    assert 0 < compiled.shared <= 48 * 1024
    assert compiled.threads == 128


def _state(dirs: int, hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(dirs, BATCH, hidden, generator=gen) * 0.5 for _ in range(2))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_node_kernel_starts_from_the_initial_state_as_the_pytorch_layer_does(
    bidirectional: bool,
) -> None:
    # The layer's own init: with every weight in ±0.5 and a random state on top, fp32
    # rounding alone reaches 1e-5 (1.5e-5 against the fp32 layer, 1.0e-5 against fp64).
    layer = _layer(dim=20, hidden=48, seed=4, spread=False, bidirectional=bidirectional)
    x = torch.randn(BATCH, STEPS, VIEWS, 20)
    h0, c0 = _state(2 if bidirectional else 1, 48, seed=5)
    with torch.no_grad():
        out, (h_n, c_n) = copy.deepcopy(layer).double()(
            x.double(), VIEW_MASK, LENGTHS, state=(h0.double(), c0.double())
        )
        w, r, bias, peep = _node_weights(layer, torch.float32)
        got = mplstm_layer_triton(
            x, VIEW_MASK, LENGTHS, w, r, bias, peep, bidirectional, "sigmoid", h0, c0
        )
    errors = _max_errors((out, h_n, c_n), got)
    assert max(errors) <= TOLERANCES["kernel-fp32"], errors


def test_recurrence_kernel_carries_the_state_across_chunks() -> None:
    hidden = 32
    layer = _layer(dim=8, hidden=hidden, seed=6)
    x = torch.randn(BATCH, STEPS, VIEWS, 8)
    with torch.no_grad():
        whole, (h_n, c_n) = layer(x, VIEW_MASK)
        proj = prepare_gates(
            input_projection(x, layer.weight_ih_l0, layer.bias_ih_l0 + layer.bias_hh_l0), VIEW_MASK
        )
        g_scale = gate_vector(hidden, 1.0, 1.0, 2.0, 1.0, x)
        weight_hh_t = (layer.weight_hh_l0 * g_scale[:, None]).t().contiguous()
        h = c = torch.zeros(BATCH, hidden)
        outputs = []
        for start, stop in ((0, 1), (1, 4), (4, STEPS)):
            chunk = proj[:, :, start:stop].contiguous()
            y, h, c = mplstm_recurrence_triton(chunk, weight_hh_t, None, None, False, False, h, c)
            outputs.append(y)
    got = (torch.cat(outputs, dim=1), h, c)
    errors = _max_errors((whole, h_n[0], c_n[0]), got)
    assert max(errors) <= TOLERANCES["kernel-fp32"], errors


def test_kernel_compiles_with_state_inputs_after_the_node_inputs() -> None:
    spec = KernelSpec(hidden_size=64, num_views=5, dtype=torch.float16, initial_state=True)
    compiled = compile_ptx(spec, 80)
    entry = re.search(rf"\.entry {compiled.name}\((.*?)\)", compiled.ptx, re.DOTALL)
    assert entry is not None
    params = re.findall(r"\.param \.(u64|u32)", entry.group(1))
    # X, view_mask, lengths, W, R, bias, initial_h, initial_c; B, T, D; Y, Y_h, Y_c.
    assert params[:14] == ["u64"] * 8 + ["u32"] * 3 + ["u64"] * 3
