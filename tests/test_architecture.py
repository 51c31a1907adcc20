"""The layout rules of DESIGN.md §1, held over the source (ast) and in real processes.

- `scoring` and `service` never import each other: what both need lives in `inference`
  or `core`;
- `core`, `inference` and `service` never import torch at module level (the serving
  image has no torch), and `mplstm --help` / `mplstm serve --help` start without it;
- no import cycle among the modules under mplstm/ (module-level imports, the ones that
  run at import time);
- no function over 80 lines (the Triton kernel, one persistent loop, excepted).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mplstm"
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = {("mplstm.export.kernel", "mplstm_kernel")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path, *, module_level: bool) -> Iterator[str]:
    """Modules `path` imports: at module level only (not in functions, not TYPE_CHECKING), or all."""
    tree = ast.parse(path.read_text(), str(path))
    name = next(n for n, p in MODULES.items() if p == path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = _top_level(tree.body) if module_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in MODULES else base


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            yield from _top_level(node.body)
            yield from _top_level(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_scoring_and_service_never_import_each_other() -> None:
    found = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        for target in _imports(path, module_level=False)
        if {_part(name), _part(target)} == {"scoring", "service"} and target.startswith("mplstm.")
    ]
    assert not found, found


@pytest.mark.parametrize("part", ["core", "inference", "service"])
def test_torch_free_parts_never_import_torch_at_module_level(part: str) -> None:
    found = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if _part(name) == part
        for target in _imports(path, module_level=True)
        if target.split(".")[0] == "torch"
        or (_part(target) in ("training", "export") and target.startswith("mplstm."))
    ]
    assert not found, found


def test_no_import_cycles_among_modules() -> None:
    graph = {
        name: {t for t in _imports(path, module_level=True) if t in MODULES and t != name}
        for name, path in MODULES.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_no_function_is_over_80_lines() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES and (name, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["score", "--help"]])
def test_the_command_line_starts_without_torch(argv: list[str]) -> None:
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['mplstm', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('mplstm', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('torch-free')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("torch-free")


def test_the_checks_see_what_they_check() -> None:
    """The import parser finds known edges, so an empty finding above means something."""
    runner = set(_imports(MODULES["mplstm.scoring.runner"], module_level=True))
    assert "mplstm.inference.options" in runner and "mplstm.core.worker_pool" in runner
    lazy = set(_imports(MODULES["mplstm.inference.select"], module_level=False))
    assert "mplstm.inference.tensorrt" in lazy
    assert "mplstm.inference.tensorrt" not in set(
        _imports(MODULES["mplstm.inference.select"], module_level=True)
    )
