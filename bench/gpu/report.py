"""The kit's report: gpu-check.json (everything) and gpu-check.md (the same, to read and
paste into docs/benchmarks.md). Both are rewritten after every part."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

JSON_NAME = "gpu-check.json"
MD_NAME = "gpu-check.md"


def write(report: dict[str, Any], out: Path) -> None:
    """Write both files to `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / MD_NAME).write_text(markdown(report))


def _num(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, int | float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown: a header, one status line per part, one section each."""
    kit = report["kit"]
    if kit["dry_run"]:
        title = "# GPU check: DRY RUN, the CPU standing in for the GPU (no GPU result here)"
    else:
        title = f"# GPU check on {kit['device']}"
    lines = [
        title,
        "",
        f"Every device figure below comes from **{kit['device']}**"
        + (
            ": CPU stand-ins that exercise the kit, never GPU results."
            if kit["dry_run"]
            else " unless its row names another device."
        ),
        f"Command `{kit['command']}`; started {kit['started_utc']}; "
        f"{_num(kit.get('seconds', 0.0), '.1f')} s of a {_num(kit['budget_s'], '.0f')} s budget; "
        f"commit {kit.get('commit', 'unknown')}; settings: {kit.get('settings', {})}."
        + ("" if kit.get("complete") else " **Incomplete: the kit was still running.**"),
        "",
        *_table(
            ["part", "status", "device", "seconds"],
            [
                [
                    f"{p['part']}. {p['title']}",
                    p["status"],
                    p.get("device", ""),
                    _num(p.get("seconds", ""), ".1f"),
                ]
                for p in report["parts"]
            ],
        ),
    ]
    for part in report["parts"]:
        lines += ["", f"## {part['part']}. {part['title']}", ""]
        if part["status"] != "ran":
            lines.append(f"{part['status']}")
            continue
        lines += SECTIONS[part["name"]](part["results"], part.get("device", ""))
    return "\n".join(lines) + "\n"


def host_section(r: dict[str, Any], device: str) -> list[str]:
    """Part 1: what was found, next to our pins."""
    versions = r["versions"]
    rows = [
        ["GPU", f"{r['gpu']} (x{r['gpu_count']})" if r["gpu_count"] else r["gpu"], ""],
        ["compute capability", r["compute_capability"], ""],
        ["GPU memory (GiB)", r["memory_gib"], ""],
        ["driver", r["driver"], ""],
        ["CUDA (torch's runtime)", r["cuda_runtime_of_torch"], ""],
        ["cuDNN", r["cudnn"], ""],
    ]
    for name, v in versions.items():
        found = v["found"]
        if name == "onnxruntime" and r["onnxruntime_providers"]:
            found += f" ({', '.join(r['onnxruntime_providers'])})"
        rows.append([name, found, v["pinned"] or "(not pinned)"])
    rows += [
        ["Python", r["python"]["found"], r["python"]["pinned"] or "(unknown)"],
        ["platform", r["platform"], ""],
        ["CPUs usable", r["cpu_count"], ""],
    ]
    return _table(["", "found", "pinned in pyproject.toml"], rows)


def kernel_section(r: dict[str, Any], device: str) -> list[str]:
    """Part 2: one row per case, its error against the tolerance table."""
    s = r["summary"]
    tol = ", ".join(f"{k} {v:.0e}" for k, v in s["tolerances"].items())
    rows = []
    for c in r["cases"]:
        if c["status"] != "ran":
            rows.append(
                [
                    c["case"],
                    "",
                    "",
                    "",
                    "",
                    c["status"] + (f" ({c['why']})" if "why" in c else ""),
                    "",
                ]
            )
            continue
        verdict = "within" if c["within_tolerance"] else "**exceeds**"
        rows.append(
            [
                c["case"],
                c["shape"],
                c["weights"],
                f"{c['max_abs_error']:.2e}",
                f"{c['tolerance']:.0e}",
                verdict,
                c["device"],
            ]
        )
    worst = ", ".join(f"{k} {_num(v, '.2e')}" for k, v in s["worst"].items())
    return [
        f"Max abs error of Y, Y_h, Y_c against the interpreter tests' tolerances ({tol}; "
        f"`kernel-*` in mplstm/inference/parity.py). Reference: {s['reference']}. Views missing in "
        "some samples and uneven lengths in every case.",
        "",
        *_table(
            ["case", "shape", "weights", "max abs error", "tolerance", "verdict", "device"], rows
        ),
        "",
        f"{s['cases_ran']} cases ran; all within tolerance: "
        f"**{'yes' if s['all_within_tolerance'] else 'no'}**; worst {worst}.",
    ]


def speed_section(r: dict[str, Any], device: str) -> list[str]:
    """Part 3: ms per layer forward of each implementation, ratios, targets."""
    z = r["sizes"]
    rows = []
    for row in r["rows"]:
        if row["status"] != "ran":
            rows.append([row["dtype"], row["batch"], row["status"], "", "", "", "", "", ""])
            continue
        ms = row["ms"]
        rows.append(
            [
                row["dtype"],
                row["batch"],
                _num(ms["kernel"]),
                _num(ms["kernel_projection_outside"]),
                _num(ms["eager"]),
                _num(ms["lstm"]),
                f"{row['kernel_over_lstm']:.2f}x",
                f"{row['eager_over_kernel']:.2f}x",
                row["device"],
            ]
        )
    targets = [
        f"- {name}: **{t['verdict']}** (worst ratio {_num(t['worst_ratio'], '.2f')})"
        for name, t in r["targets"].items()
    ]
    return [
        f"One unidirectional layer, T={z['steps']}, P={z['views']}, D={z['dim']}, U={z['hidden']}; "
        f"ms per forward, median of {r['timing']['rounds']} rounds of {r['timing']['reps']} after "
        f"{r['timing']['warmup']} warm-up ({r['timing']['clock']}); TF32 {r['tf32']}. "
        "nn.LSTM reads "
        "P·D inputs (cuDNN on a GPU).",
        "",
        *_table(
            [
                "dtype",
                "B",
                "kernel",
                "kernel, projection outside",
                "eager",
                "nn.LSTM",
                "kernel / LSTM",
                "eager / kernel",
                "device",
            ],
            rows,
        ),
        "",
        "Targets:",
        *targets,
    ]


def _runtime_rows(rows: list[dict[str, Any]]) -> list[str]:
    """A clips/s table of parts 4 and 5, a device per row."""
    return _table(
        ["runtime", "batch", "ms per batch", "clips/s", "device"],
        [
            [
                x["runtime"],
                x["batch"],
                _num(x["ms_per_batch"]),
                _num(x["clips_per_s"], ".1f"),
                x["device"],
            ]
            for x in rows
        ],
    )


def _parity(p: Any) -> str:
    """One line on logits parity, with the devices compared."""
    if not isinstance(p, dict):
        return f"Parity: {p}."
    verdict = {True: "within", False: "**exceeds**", None: "not judged"}[p["within_tolerance"]]
    where = f" ({p['device']})" if "device" in p else ""
    return (
        f"Parity of logits{where}: max abs diff {p['max_abs_diff_logits']:.2e}, {verdict} "
        f"{_num(p['tolerance'])} ({p.get('tolerance_from', '')}); argmax agreement "
        f"{p['argmax_agreement']:.0%} of {p['samples']} clips."
    )


def model_section(r: dict[str, Any], device: str) -> list[str]:
    """Part 4: both runtimes' clips/s, the ratio, and parity."""
    lines = [
        f"Package `{r['package']}`; weights: {r['weights']}; clips: {r['clips']}; T={r['frames']}. "
        "Inference only, clips already in memory.",
        "",
        *_runtime_rows(r["rows"]),
        "",
    ]
    if "speedup_over_onnxruntime_cpu" in r:
        ratios = ", ".join(
            f"batch {b} {_num(v)}x" for b, v in r["speedup_over_onnxruntime_cpu"].items()
        )
        stand_in = (
            " (the CPU standing in for the GPU: not a GPU figure)"
            if device.startswith("cpu")
            else ""
        )
        lines.append(f"Kernel model over ONNX Runtime CPU, clips/s{stand_in}: {ratios}.")
    else:
        lines.append(f"ONNX Runtime CPU: {r['onnxruntime_cpu']}.")
    return [*lines, "", _parity(r["parity"])]


def runtimes_section(r: dict[str, Any], device: str) -> list[str]:
    """Part 5: ONNX Runtime CUDA, then each TensorRT engine."""
    lines = [
        f"Clips: {r['clips']}. Parity reference: {r['parity_reference']}.",
        "",
        "### ONNX Runtime, CUDA",
    ]
    ort = r["onnxruntime_cuda"]
    lines += [""] + (
        [*_runtime_rows(ort["rows"]), "", _parity(ort["parity"])]
        if ort["status"] == "ran"
        else [ort["status"]]
    )
    lines += ["", "### TensorRT", ""]
    trt = r["tensorrt"]
    if trt["status"] != "ran":
        return [*lines, trt["status"]]
    lines.append(
        f"TensorRT {trt['tensorrt']}; engines built by build_engine, run with TensorRT's "
        "Python API."
    )
    for e in trt["engines"]:
        lines += ["", f"Engine {e['engine']}: {e['status']}"]
        if e["status"] == "ran":
            lines += [
                f"(`{e['file']}`, plugin in engine: {e['plugin_in_engine']}, "
                f"built in {e['build_s']} s)",
                "",
                *_runtime_rows(e["rows"]),
                "",
                _parity(e["parity"]),
            ]
    return lines


SECTIONS: dict[str, Callable[[dict[str, Any], str], list[str]]] = {
    "host": host_section,
    "kernel": kernel_section,
    "speed": speed_section,
    "model": model_section,
    "runtimes": runtimes_section,
}
