"""Compile the MP-LSTM kernel to PTX for a GPU target, with no GPU needed (DESIGN.md §6).

`compile_ptx(spec, target)` runs `triton.compile(ASTSource(...), target=GPUTarget(...))`:
the TensorRT AOT plugin embeds its result in the engine, and the tests check it for
sm_80 and sm_90 on a CPU-only machine. Triton's interpreter (TRITON_INTERPRET=1 at
import, as the CPU parity tests run) replaces triton.language's functions with
interpreted ones that cannot be compiled, so in such a process the compile runs in a
child process without it (`python -m mplstm.export.ptx`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch

from mplstm.export import kernel
from mplstm.export.kernel import KernelSpec

_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16"}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}


@dataclass(frozen=True)
class CompiledKernel:
    """What a launcher outside Python (TensorRT) needs: entry name, PTX, launch shape."""

    name: str  # the PTX entry point
    ptx: str
    num_warps: int  # block_x = 32 * num_warps
    shared: int  # dynamic shared memory, bytes
    arch: int  # e.g. 80, 90

    @property
    def threads(self) -> int:
        return 32 * self.num_warps


def signature(spec: KernelSpec) -> tuple[dict[str, str], dict[str, object]]:
    """The kernel's Triton signature and constexprs for `spec`.

    Arguments the spec does not use (W and bias for prepared projections, peepholes where
    the layer has none, h0 and c0 without an initial state) are constexpr None, so the compiled kernel's parameters are exactly
    the node's inputs, then the int32 scalars, then the outputs.
    """
    fp = "*" + _TRITON_DTYPES[spec.dtype]
    # view_mask bool, lengths int64 (the ONNX node's types); every other input is float.
    input_types = [fp, "*i1", "*i64", fp, fp, fp, fp, fp, fp]
    sig = {
        **dict(zip(kernel.INPUT_ARGS, input_types, strict=True)),
        **dict.fromkeys(kernel.SCALAR_ARGS, "i32"),
        **dict.fromkeys(kernel.OUTPUT_ARGS, fp),
    }
    constexprs = spec.constexprs()
    unused = [] if spec.fused else ["w_ptr", "bias_ptr"]
    if not spec.peepholes:
        unused.append("peep_ptr")
    if not spec.initial_state:
        unused += ["h0_ptr", "c0_ptr"]
    for name in unused:
        constexprs[name] = None
    for name in constexprs:
        sig[name] = "constexpr"
    return sig, constexprs


def _compile_here(spec: KernelSpec, arch: int) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs = signature(spec)
    source = ASTSource(fn=kernel.mplstm_kernel, signature=sig, constexprs=constexprs)
    target = GPUTarget("cuda", arch, 32)
    compiled = triton.compile(source, target=target, options={"num_warps": spec.num_warps})
    if getattr(compiled.metadata, "global_scratch_size", 0) > 0:
        raise RuntimeError(
            "the MP-LSTM kernel compiled with a global scratch buffer, which an AOT "
            "TensorRT plugin cannot provide"
        )
    return CompiledKernel(
        name=compiled.metadata.name,
        ptx=compiled.asm["ptx"],
        num_warps=compiled.metadata.num_warps,
        shared=compiled.metadata.shared,
        arch=arch,
    )


def _spec_to_json(spec: KernelSpec) -> str:
    fields = asdict(spec)
    fields["dtype"] = _DTYPE_NAMES[spec.dtype]
    return json.dumps(fields)


def _spec_from_json(text: str) -> KernelSpec:
    fields = json.loads(text)
    fields["dtype"] = getattr(torch, fields["dtype"])
    return KernelSpec(**fields)


def _compile_in_child(spec: KernelSpec, arch: int) -> CompiledKernel:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "mplstm.export.ptx", "--arch", str(arch), _spec_to_json(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"compiling the MP-LSTM kernel for sm_{arch} failed:\n{result.stderr}")
    return CompiledKernel(**json.loads(result.stdout))


def compile_ptx(spec: KernelSpec, arch: int) -> CompiledKernel:
    """Compile the kernel for `spec` to PTX for sm_<arch> (80: A100, 90: H100); no GPU needed."""
    if kernel.interpreting():
        return _compile_in_child(spec, arch)
    return _compile_here(spec, arch)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: print the CompiledKernel for a JSON KernelSpec as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, required=True, help="compute capability, e.g. 80")
    parser.add_argument("spec", help="KernelSpec as JSON (dtype: float32 or float16)")
    args = parser.parse_args(argv)
    compiled = _compile_here(_spec_from_json(args.spec), args.arch)
    print(json.dumps(asdict(compiled)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
