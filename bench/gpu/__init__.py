"""The GPU truth kit (issue 21, DESIGN.md §6): every GPU claim checked by one command.

    make gpu-check                         # = python3 -m bench.gpu --out gpu-check
    python -m bench.gpu --out DIR          # on a bare NVIDIA host: torch (CUDA) + Triton
    python -m bench.gpu --dry-run --out DIR   # CPU stand-in (Triton's interpreter), in CI

It builds no venv and installs nothing: it uses the Python it runs under, records the
versions it found (they may differ from pyproject.toml's pins) and skips, with the reason,
whatever needs a package that is absent (onnxruntime-gpu, TensorRT, PyAV). Parts:

1. `host`: GPU, compute capability, memory, driver, CUDA, and every relevant version.
2. `kernel_check`: the Triton recurrence kernel against the PyTorch layer (fp64
   reference on the same device), fp32 and fp16, masks, uneven lengths; max abs error per
   case against the `kernel-*` rows of mplstm/inference/parity.py, the interpreter tests' table.
3. `speed`: the kernel, the eager recurrence and cuDNN's nn.LSTM side by side.
4. `model`: the demo lip-reading model with the kernel as its recurrence against the
   same model on ONNX Runtime's CPU provider.
5. `runtimes`: model.onnx on ONNX Runtime's CUDA provider; TensorRT engines with and
   without the plugin.

Each part runs isolated (an exception is recorded as "failed: ..." and the next part
runs), a time budget is checked between parts and cases, and the report (gpu-check.json,
gpu-check.md) is rewritten after every part, so a kit killed half-way still leaves what it
measured. Nothing in this package imports torch or triton at import time: the dry run must
set TRITON_INTERPRET before triton is first imported.
"""
