"""The MP-LSTM layer against a separately written numpy reference, and its contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_mplstm import reference_mplstm

from mplstm.training import cell_cpu
from mplstm.training.cell import MPLSTM, hard_sigmoid

B, T, P, D, U = 3, 5, 3, 4, 6
VIEW_MASK = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
LENGTHS = torch.tensor([5, 3, 1])


def _randomized(layer: MPLSTM, seed: int = 0) -> MPLSTM:
    """Random weights large enough to reach sigmoid/hard_sigmoid saturation, peepholes too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.7)
    return layer


def _params(layer: MPLSTM) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in layer.state_dict().items()}


CASES = {
    "plain": {},
    "masked_views": {"mask": True},
    "lengths": {"lengths": True},
    "bidirectional_masked_lengths": {"bidirectional": True, "mask": True, "lengths": True},
    "two_layers_bidirectional": {
        "num_layers": 2,
        "bidirectional": True,
        "mask": True,
        "lengths": True,
    },
    "two_layers_unidirectional": {"num_layers": 2, "lengths": True},
    "hard_sigmoid": {"recurrent_activation": "hard_sigmoid", "mask": True, "bidirectional": True},
    "candidate_uses_forget_kernel": {"candidate_uses_forget_kernel": True, "mask": True},
    "peepholes": {"peepholes": True, "mask": True, "lengths": True, "bidirectional": True},
    "all_options": {
        "num_layers": 2,
        "bidirectional": True,
        "recurrent_activation": "hard_sigmoid",
        "candidate_uses_forget_kernel": True,
        "peepholes": True,
        "mask": True,
        "lengths": True,
    },
}


@pytest.mark.parametrize("path", ["eager", "fused"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_layer_matches_numpy_reference_in_fp64(case: dict, path: str) -> None:
    """Both recurrences: eager (a gradient is needed) and the fused CPU kernel (inference)."""
    options = {k: v for k, v in case.items() if k not in ("mask", "lengths")}
    layer = _randomized(MPLSTM(D, U, P, **options).double())
    x = torch.randn(B, T, P, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = VIEW_MASK if case.get("mask") else None
    lengths = LENGTHS if case.get("lengths") else None
    with torch.set_grad_enabled(path == "eager"):
        assert cell_cpu.applies(x, *layer.parameters()) == (path == "fused")
        out, (h_n, c_n) = layer(x, mask, lengths)
    ref_out, ref_h, ref_c = reference_mplstm(
        x.numpy(),
        _params(layer),
        num_layers=options.get("num_layers", 1),
        bidirectional=options.get("bidirectional", False),
        view_mask=None if mask is None else mask.numpy(),
        lengths=None if lengths is None else lengths.numpy(),
        recurrent_activation=options.get("recurrent_activation", "sigmoid"),
        candidate_uses_forget_kernel=options.get("candidate_uses_forget_kernel", False),
        peepholes=options.get("peepholes", False),
    )
    dirs = 2 if options.get("bidirectional") else 1
    assert out.shape == (B, T, dirs * U)
    assert h_n.shape == c_n.shape == (options.get("num_layers", 1) * dirs, B, U)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n.detach().numpy(), ref_h, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c_n.detach().numpy(), ref_c, rtol=0, atol=1e-5)


def test_hard_sigmoid_is_keras2_clip_of_point_two_x_plus_half() -> None:
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    expected = torch.clamp(0.2 * x + 0.5, 0.0, 1.0)
    torch.testing.assert_close(hard_sigmoid(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True], ids=["all_views", "masked_view_and_lengths"])
def test_gradcheck_on_tiny_bidirectional_two_layer_peephole_layer(masked: bool) -> None:
    layer = _randomized(MPLSTM(3, 2, 2, num_layers=2, bidirectional=True, peepholes=True).double())
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False], [True, True]]) if masked else None
    lengths = torch.tensor([3, 2]) if masked else None
    params = tuple(layer.parameters())

    def run(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = dict(zip((n for n, _ in layer.named_parameters()), weights, strict=True))
        out, (h, c) = torch.func.functional_call(layer, state, (x, mask, lengths))
        return out, h, c

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-6)


def test_masked_view_gives_the_output_of_the_layer_without_that_view() -> None:
    full = _randomized(MPLSTM(D, U, P, bidirectional=True, peepholes=True).double())
    keep = [0, 2]
    reduced = MPLSTM(D, U, len(keep), bidirectional=True, peepholes=True).double()
    with torch.no_grad():
        for name, param in reduced.named_parameters():
            source = getattr(full, name)
            param.copy_(source[keep] if name.startswith(("weight_ih", "bias_ih")) else source)
    x = torch.randn(B, T, P, D, dtype=torch.float64)
    mask = torch.tensor([[True, False, True]] * B)
    out, (h, c) = full(x, mask, LENGTHS)
    ref_out, (ref_h, ref_c) = reduced(x[:, :, keep], None, LENGTHS)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=0, atol=1e-12)


def test_masked_view_input_does_not_reach_output_or_gradients() -> None:
    layer = MPLSTM(D, U, P)
    x = torch.randn(B, T, P, D, requires_grad=True)
    mask = torch.tensor([[True, True, False]] * B)
    out, _ = layer(x, mask)
    other = x.detach().clone()
    other[:, :, 2] = 1e3
    torch.testing.assert_close(layer(other, mask)[0], out)
    out.sum().backward()
    assert x.grad is not None
    assert torch.all(x.grad[:, :, 2] == 0)
    assert torch.all(torch.isfinite(layer.weight_ih_l0.grad))


def test_all_views_masked_raises_value_error_naming_the_sample() -> None:
    layer = MPLSTM(D, U, P)
    mask = torch.tensor([[True, False, False], [False, False, False], [False, True, False]])
    with pytest.raises(ValueError, match=r"every view of sample\(s\) \[1\]"):
        layer(torch.randn(B, T, P, D), mask)


def test_lengths_outside_one_to_t_are_refused() -> None:
    layer = MPLSTM(D, U, P)
    with pytest.raises(ValueError, match="lengths must lie in"):
        layer(torch.randn(B, T, P, D), None, torch.tensor([T + 1, 2, 1]))


def test_wrong_input_shape_says_the_expected_shape() -> None:
    with pytest.raises(ValueError, match=r"\[B, T, P=3, D=4\]"):
        MPLSTM(D, U, P)(torch.randn(B, T, 2, D))


def test_padding_past_length_does_not_change_a_sequence_in_either_direction() -> None:
    layer = MPLSTM(D, U, P, bidirectional=True)
    x = torch.randn(1, T, P, D)
    out, (h, c) = layer(x, None, torch.tensor([3]))
    short_out, (short_h, short_c) = layer(x[:, :3])
    torch.testing.assert_close(out[:, :3], short_out)
    assert torch.all(out[:, 3:] == 0)
    torch.testing.assert_close(h, short_h)
    torch.testing.assert_close(c, short_c)


def test_time_major_input_gives_the_transposed_batch_first_output() -> None:
    batch_first = MPLSTM(D, U, P, num_layers=2)
    time_major = MPLSTM(D, U, P, num_layers=2, batch_first=False)
    time_major.load_state_dict(batch_first.state_dict())
    x = torch.randn(B, T, P, D)
    out, (h, c) = batch_first(x)
    out_t, (h_t, c_t) = time_major(x.transpose(0, 1))
    torch.testing.assert_close(out_t.transpose(0, 1), out)
    torch.testing.assert_close(h_t, h)
    torch.testing.assert_close(c_t, c)


def test_parameters_follow_torch_lstm_names_with_a_view_axis() -> None:
    layer = MPLSTM(D, U, P, num_layers=2, bidirectional=True, peepholes=True)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    for suffix in ("", "_reverse"):
        assert shapes[f"weight_ih_l0{suffix}"] == (P, 4 * U, D)
        assert shapes[f"bias_ih_l0{suffix}"] == (P, 4 * U)
        assert shapes[f"weight_ih_l1{suffix}"] == (1, 4 * U, 2 * U)
        assert shapes[f"weight_hh_l1{suffix}"] == (4 * U, U)
        assert shapes[f"bias_hh_l1{suffix}"] == (4 * U,)
        assert shapes[f"weight_peep_l1{suffix}"] == (3, U)
    assert len(shapes) == 2 * 2 * 5


def test_forget_gate_bias_starts_at_one_and_peepholes_at_zero() -> None:
    layer = MPLSTM(D, U, P, peepholes=True)
    forget = layer.bias_ih_l0[:, U : 2 * U] + layer.bias_hh_l0[U : 2 * U]
    assert torch.all(forget == 1.0)
    assert torch.all(layer.weight_peep_l0 == 0)


def test_single_view_layer_equals_torch_lstm_with_the_same_weights() -> None:
    ours = MPLSTM(D, U, 1, bidirectional=True).double()
    theirs = torch.nn.LSTM(D, U, bidirectional=True, batch_first=True).double()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            param.copy_(getattr(ours, name)[0] if "_ih_" in name else getattr(ours, name))
    x = torch.randn(B, T, D, dtype=torch.float64)
    out, (h, c) = ours(x.unsqueeze(2))
    ref_out, (ref_h, ref_c) = theirs(x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(c, ref_c)


def test_compatibility_option_leaves_the_candidate_recurrent_rows_unused() -> None:
    layer = MPLSTM(D, U, P, candidate_uses_forget_kernel=True)
    out, _ = layer(torch.randn(B, T, P, D))
    out.sum().backward()
    grad = layer.weight_hh_l0.grad
    assert torch.all(grad[2 * U : 3 * U] == 0)
    assert torch.any(grad[U : 2 * U] != 0)


def test_five_view_layer_at_init_does_not_explode_gradients_back_in_time() -> None:
    # h sums P views' outputs and U h feeds every view's gates: with LSTM-sized U the first
    # step's gradient was ~200 times the last one's at P = 5, and training sat at chance.
    torch.manual_seed(0)
    views, steps = 5, 20
    layer = MPLSTM(64, 128, views)
    # Inputs in [0, 1), like the front-end's ReLU features.
    x = torch.rand(8, steps, views, 64).requires_grad_()
    out, _ = layer(x)
    out[:, -1].sum().backward()
    per_step = x.grad.pow(2).sum(dim=(0, 2, 3)).sqrt()
    assert per_step[0] < per_step[-1]


@pytest.mark.parametrize("path", ["eager", "fused"])
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "peepholes": True}], ids=["one", "two"])
def test_chunks_carrying_the_state_give_the_whole_sequence(options: dict, path: str) -> None:
    layer = _randomized(MPLSTM(D, U, P, **options).double().eval())
    x = torch.randn(B, 9, P, D, dtype=torch.float64)
    with torch.no_grad(), cell_cpu.disabled() if path == "eager" else _nothing():
        whole, (h_n, c_n) = layer(x, VIEW_MASK)
        state, outputs = None, []
        for start, stop in ((0, 1), (1, 4), (4, 9)):
            out, state = layer(x[:, start:stop], VIEW_MASK, state=state)
            outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(state[0], h_n, rtol=0, atol=1e-12)
    torch.testing.assert_close(state[1], c_n, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["eager", "fused"])
def test_initial_state_matches_the_reference_in_both_directions(path: str) -> None:
    layer = _randomized(MPLSTM(D, U, P, bidirectional=True).double().eval())
    x = torch.randn(B, T, P, D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    h0, c0 = (torch.randn(2, B, U, generator=gen, dtype=torch.float64) for _ in range(2))
    with torch.no_grad(), cell_cpu.disabled() if path == "eager" else _nothing():
        out, (h_n, c_n) = layer(x, VIEW_MASK, LENGTHS, state=(h0, c0))
    expected = reference_mplstm(
        x.numpy(),
        _params(layer),
        view_mask=VIEW_MASK.numpy(),
        lengths=LENGTHS.numpy(),
        bidirectional=True,
        initial_state=(h0.numpy(), c0.numpy()),
    )
    np.testing.assert_allclose(out.numpy(), expected[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(h_n.numpy(), expected[1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(c_n.numpy(), expected[2], rtol=0, atol=1e-10)


def test_a_state_of_the_wrong_shape_is_refused_with_the_expected_shape() -> None:
    layer = MPLSTM(D, U, P)
    with pytest.raises(ValueError, match=r"\[layers\*dirs=1, B=3, U=6\]"):
        layer(torch.randn(B, T, P, D), state=(torch.zeros(1, 2, U), torch.zeros(1, 2, U)))


def _nothing():
    import contextlib

    return contextlib.nullcontext()
