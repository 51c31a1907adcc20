"""The fused CPU kernel of the MP-LSTM recurrence (cell_cpu.cpp): build, load, call.

`MPLSTM` runs it where no gradient is needed (evaluation, inference, validation); training
keeps the eager recurrence of cell.py, which autograd differentiates. Without the built
library, the layer falls back to eager with a one-time warning. Build it with

    python -m mplstm.training.cell_cpu build      # `make venv` does; needs g++

The library is named for the torch version it was built against and rebuilt when the
source changes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cell_cpu.cpp")
_LIBRARY = SOURCE.with_name(f"_cell_cpu.torch-{torch.__version__.split('+')[0]}.so")
_state: dict[str, bool | None] = {"loaded": None, "enabled": True}


class KernelBuildError(RuntimeError):
    """g++ failed or is missing; the message carries the compiler's output."""


def library_path() -> Path:
    """Where the built kernel lives (inside the package, next to its source)."""
    return _LIBRARY


def build(force: bool = False) -> Path:
    """Compile cell_cpu.cpp against the installed torch, unless an up-to-date build exists."""
    if not force and _LIBRARY.exists() and _LIBRARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return _LIBRARY
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    partial = _LIBRARY.with_suffix(".tmp")  # renamed into place once g++ succeeds
    command = [
        "g++",
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        # torch's own libgomp.so.1 (below, by soname): one OpenMP pool, torch's.
        "-fopenmp",
        # Lets gcc vectorize the sigmoid loops (branch-free clamps); results are unchanged:
        # it only stops gcc from preserving floating-point exception flags.
        "-fno-trapping-math",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *[f"-I{p}" for p in cpp_extension.include_paths()],
        str(SOURCE),
        "-o",
        str(partial),
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise KernelBuildError("g++ not found: install a C++ compiler to build it") from exc
    if done.returncode != 0:
        raise KernelBuildError(f"g++ failed ({done.returncode}):\n{done.stderr[-4000:]}")
    partial.replace(_LIBRARY)
    return _LIBRARY


def available() -> bool:
    """Load the built kernel once; False (with one warning) when it was not built."""
    if _state["loaded"] is None:
        if _LIBRARY.exists():
            torch.ops.load_library(str(_LIBRARY))
            _state["loaded"] = True
        else:
            log.warning(
                "the fused MP-LSTM CPU kernel is not built (%s): inference uses the slower "
                "eager recurrence; build it with `python -m mplstm.training.cell_cpu build`",
                _LIBRARY.name,
            )
            _state["loaded"] = False
    return bool(_state["loaded"])


def applies(proj: Tensor, *weights: Tensor) -> bool:
    """True when the fused kernel can run: CPU, fp32/fp64, no gradient, library built.

    The layer also keeps the eager recurrence while torch traces or exports it
    (cell._exporting): an exported graph must not hold this op.
    """
    if not _state["enabled"] or proj.device.type != "cpu":
        return False
    if proj.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and any(w.requires_grad for w in (proj, *weights)):
        return False
    return available()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the eager recurrence inside this block (reference runs, benchmarks)."""
    before = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = before


def input_projection(x: Tensor, weight_ih: Tensor) -> Tensor:
    """x [B, T, P, D] times weight_ih [P, 4U, D] → [P, B, T, 4U], biases left to the kernel.

    One GEMM per view over all steps, into one buffer: torch's bmm splits its threads over
    the P batch entries, which leaves a core idle for part of the time when P = 5 on 2
    cores (docs/benchmarks.md, design figures); each mm uses every thread.
    """
    batch, steps, views, dim = x.shape
    proj = x.new_empty(views, batch * steps, weight_ih.shape[1])
    rows = x.reshape(batch * steps, views, dim)
    for view in range(views):
        torch.mm(rows[:, view], weight_ih[view].t(), out=proj[view])
    return proj.view(views, batch, steps, -1)


def recurrence(
    proj: Tensor,
    bias: Tensor,
    weight_hh_t: Tensor,
    peep: Tensor | None,
    view_mask: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    hard: bool,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction over raw projections proj [P, B, T, 4U] (no bias, no g scaling).

    bias [P, 4U] = bias_ih + bias_hh; weight_hh_t [U, 4U]; peep [4U] or None; view_mask
    [B, P] bool or None; lengths [B] or None; h0, c0 [B, U], the initial state, or None
    (zeros). Returns output [B, T, U], h_n, c_n [B, U].
    """
    return torch.ops.mplstm_cpu.recurrence(
        proj, bias, weight_hh_t, peep, view_mask, lengths, reverse, hard, h0, c0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the fused MP-LSTM CPU kernel.")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force)
    except KernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
