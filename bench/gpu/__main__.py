"""`python -m bench.gpu --out DIR [--dry-run]`: run the GPU truth kit (see bench/gpu/__init__.py).

Exit status 0 when every selected part ran or skipped with its reason, 1 when one failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# The repository root on sys.path: a bare GPU host runs the checkout, with nothing installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu import report
from bench.gpu.common import Context, Skip, error_text

BUDGET_S = 480.0  # under the 8 minutes a lent GPU host may allow, start-up included
# Part number → (report name, title, module in bench.gpu with its run(ctx)).
PARTS = {
    1: ("host", "Host", "host"),
    2: ("kernel", "Triton kernel vs the PyTorch layer", "kernel_check"),
    3: ("speed", "Kernel, eager recurrence and cuDNN LSTM side by side", "speed"),
    4: ("model", "Demo lip-reading model: kernel recurrence vs ONNX Runtime CPU", "model_check"),
    5: ("runtimes", "GPU runtimes: ONNX Runtime CUDA, TensorRT engines", "runtimes"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The kit's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-check.json/.md")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes on the CPU, the kernel in Triton's interpreter (CI); no GPU figure",
    )
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds (default 480)")
    parser.add_argument("--parts", default="1,2,3,4,5", help="comma-separated part numbers")
    parser.add_argument("--package", type=Path, default=None, help="model package (part 4, 5)")
    return parser.parse_args(argv)


def configure_triton(dry_run: bool) -> str:
    """Set TRITON_INTERPRET before anything imports triton (it is read at @triton.jit)."""
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        return "interpreter (TRITON_INTERPRET=1)"
    if os.environ.pop("TRITON_INTERPRET", None) is not None:
        return "compiled (TRITON_INTERPRET was set in the environment and was removed)"
    return "compiled"


def setup_device(ctx: Context) -> str | None:
    """Choose the device of the figures; None, or why parts 2–5 cannot run at all."""
    try:
        import torch
    except ImportError as exc:
        ctx.device_label = "none (torch is not installed)"
        return f"torch is not installed ({exc})"
    if ctx.dry_run:
        ctx.device, ctx.device_label = "cpu", "cpu (CPU stand-in for the GPU, Triton interpreter)"
        return None
    if not torch.cuda.is_available():
        ctx.device_label = "cpu (no CUDA GPU: nothing measured)"
        return "no CUDA GPU (torch.cuda.is_available() is False); --dry-run runs the CPU stand-in"
    major, minor = torch.cuda.get_device_capability(0)
    ctx.device = "cuda"
    ctx.device_label = f"cuda:0 {torch.cuda.get_device_name(0)} (sm_{major}{minor})"
    # fp32 means fp32: the kernel's fp32 dots are IEEE, and parity is judged in fp32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return None


def run_part(number: int, skip: str | None, ctx: Context, rep: dict[str, Any]) -> None:
    """Run one part, isolated: its outcome goes into the report whatever happens.

    Its module is imported here, inside the isolation, after TRITON_INTERPRET is settled.
    """
    name, title, module = PARTS[number]
    entry: dict[str, Any] = {
        "part": number,
        "name": name,
        "title": title,
        "status": "running",
        "device": ctx.device_label,
    }
    rep["parts"].append(entry)
    report.write(rep, ctx.out)  # a kit killed in this part leaves "running" on record
    started = ctx.elapsed()
    if skip is not None:
        entry["status"] = f"skipped: {skip}"
    elif ctx.out_of_time():
        entry["status"] = "skipped: time budget"
    else:
        ctx.log(f"part {number}: {title}")
        try:
            part = importlib.import_module(f"bench.gpu.{module}")
            entry.update(status="ran", **part.run(ctx))
        except Skip as exc:
            entry["status"] = f"skipped: {exc}"
        except Exception as exc:
            entry["status"] = f"failed: {error_text(exc)}"
            entry["traceback"] = traceback.format_exc()
        _release_gpu_memory(ctx)
    entry["seconds"] = round(ctx.elapsed() - started, 2)
    ctx.log(f"part {number}: {entry['status']} ({entry['seconds']} s)")


def _release_gpu_memory(ctx: Context) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts in order, rewriting the report after each; the exit status."""
    args = parse_args(argv)
    triton_mode = configure_triton(args.dry_run)
    ctx = Context(dry_run=args.dry_run, out=args.out, budget_s=args.budget)
    if args.package is not None:
        ctx.package = args.package.resolve()
    selected = {int(p) for p in args.parts.split(",") if p.strip()}
    blocked = setup_device(ctx)
    from bench.gpu.host import git_commit

    command = "python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    rep: dict[str, Any] = {
        "kit": {
            "dry_run": ctx.dry_run,
            "device": ctx.device_label,
            "command": command.strip(),
            "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "budget_s": ctx.budget_s,
            "commit": git_commit(),
            "settings": {"triton": triton_mode, "tf32": "off" if ctx.cuda else "n/a"},
            "complete": False,
        },
        "parts": [],
    }
    ctx.log(f"device: {ctx.device_label}; Triton {triton_mode}; budget {ctx.budget_s:.0f} s")
    for number in PARTS:
        skip = None
        if number not in selected:
            skip = "not selected (--parts)"
        elif blocked is not None and number > 1:  # part 1 still says what the host has
            skip = blocked
        run_part(number, skip, ctx, rep)
        rep["kit"]["seconds"] = round(ctx.elapsed(), 1)
        report.write(rep, ctx.out)
    rep["kit"]["complete"] = True
    report.write(rep, ctx.out)
    ctx.log(f"wrote {ctx.out / report.JSON_NAME} and {ctx.out / report.MD_NAME}")
    return 1 if any(p["status"].startswith("failed") for p in rep["parts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
