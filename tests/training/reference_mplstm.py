"""A plain numpy MP-LSTM written from DESIGN.md §2's equations, to check the torch layer.

Deliberately naive: loops over time steps and views, one sample at a time, real
tanh, a separate σ per gate. It shares no code with mplstm/training/cell.py; it
only reads that layer's parameters by their documented names and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras 2: clip(0.2 x + 0.5, 0, 1)."""
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def _direction(
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    name: str,
    present: np.ndarray,
    length: int,
    reverse: bool,
    act,
    compat: bool,
    peepholes: bool,
    initial: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample, one direction. x: [T, P, D]; present: [P] bool; initial: (h0, c0) [U]."""
    w_ih, b_ih = params[f"weight_ih_{name}"], params[f"bias_ih_{name}"]
    w_hh, b_hh = params[f"weight_hh_{name}"], params[f"bias_hh_{name}"]
    steps, views, _ = x.shape
    u = w_hh.shape[1]
    w_i, w_f, w_g, w_o = (w_hh[k * u : (k + 1) * u] for k in range(4))
    b_i, b_f, b_g, b_o = (b_hh[k * u : (k + 1) * u] for k in range(4))
    if compat:
        w_g = w_f  # the released code's candidate reads U_f
    p_i = p_f = p_o = np.zeros(u)
    if peepholes:
        p_i, p_f, p_o = params[f"weight_peep_{name}"]
    h, c = (np.zeros(u), np.zeros(u)) if initial is None else (initial[0].copy(), initial[1].copy())
    out = np.zeros((steps, u))
    times = range(length - 1, -1, -1) if reverse else range(length)
    for t in times:
        chain = c.copy()
        o_total = np.zeros(u)
        for j in range(views):
            if not present[j]:
                continue  # a missing view: c^(j) = c^(j-1), no output term
            zx = w_ih[j] @ x[t, j] + b_ih[j]
            zi, zf, zg, zo = (zx[k * u : (k + 1) * u] for k in range(4))
            i = act(zi + w_i @ h + b_i + p_i * c)
            f = act(zf + w_f @ h + b_f + p_f * c)
            g = np.tanh(zg + w_g @ h + b_g)
            o = act(zo + w_o @ h + b_o + p_o * c)
            chain = f * chain + i * g
            o_total = o_total + o
        c = chain
        h = o_total * np.tanh(c)
        out[t] = h
    return out, h, c


def reference_mplstm(
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    num_layers: int = 1,
    bidirectional: bool = False,
    view_mask: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    recurrent_activation: str = "sigmoid",
    candidate_uses_forget_kernel: bool = False,
    peepholes: bool = False,
    initial_state: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: [B, T, P, D] → output [B, T, dirs*U], h_n and c_n [layers*dirs, B, U].

    initial_state: (h_0, c_0), each [layers*dirs, B, U], or None for zeros.
    """
    batch, steps, views, _ = x.shape
    act = _hard_sigmoid if recurrent_activation == "hard_sigmoid" else _sigmoid
    present = np.ones((batch, views), bool) if view_mask is None else view_mask.astype(bool)
    lens = np.full(batch, steps) if lengths is None else lengths
    suffixes = ["", "_reverse"] if bidirectional else [""]
    outputs, h_n, c_n = [], [], []
    for b in range(batch):
        seq = x[b]
        h_b, c_b = [], []
        for layer in range(num_layers):
            mask = present[b] if layer == 0 else np.ones(1, bool)
            outs = []
            for k, suffix in enumerate(suffixes):
                row = layer * len(suffixes) + k
                initial = None
                if initial_state is not None:
                    initial = (initial_state[0][row, b], initial_state[1][row, b])
                o, h, c = _direction(
                    seq,
                    params,
                    f"l{layer}{suffix}",
                    mask,
                    int(lens[b]),
                    suffix == "_reverse",
                    act,
                    candidate_uses_forget_kernel,
                    peepholes,
                    initial,
                )
                outs.append(o)
                h_b.append(h)
                c_b.append(c)
            seq = np.concatenate(outs, axis=-1)[:, None, :]
        outputs.append(seq[:, 0])
        h_n.append(h_b)
        c_n.append(c_b)
    return (
        np.stack(outputs),
        np.stack(h_n).transpose(1, 0, 2),
        np.stack(c_n).transpose(1, 0, 2),
    )
