"""Readers for the deployment files (Dockerfiles, compose, kustomize) and the facts they
are checked against: the routes the app serves, the settings it reads, the CLI it parses,
the metrics it exports."""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# The Kubernetes release the manifests are validated for (kubernetes-validate schemas).
KUBERNETES_VERSION = "1.33"
SERVING_OVERLAYS = ("gpu", "cpu")
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
# How `make test` gets the command-line tools these tests drive.
_INSTALL_HINT = {
    "kubectl": "`make deploy-tools` (run by `make test`) puts kubectl (with kustomize) in .venv/bin",
    "docker-compose": "`make deploy-tools` (run by `make test`) installs Debian's docker-compose "
    "with apt-get",
    "promtool": "`make deploy-tools` (run by `make test`) installs Debian's prometheus (promtool) "
    "with apt-get",
}


def require_tool(name: str) -> str:
    """The path of a command-line tool (PATH or the venv), or skip the test saying how to get it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed: {_INSTALL_HINT[name]}")
    return found


def run_tool(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output (never raises on a non-zero exit)."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


# -- the app, its settings, CLI and metrics ------------------------------------------------


@cache
def served_get_paths() -> frozenset[str]:
    """Every path the service app answers GET on, from its own OpenAPI route table (the
    app is built, not started: no models needed)."""
    from mplstm.service.app import create_app
    from mplstm.service.settings import Settings

    app = create_app(Settings(models_dir=REPO / "models"))
    paths = app.openapi()["paths"]
    return frozenset(path for path, methods in paths.items() if "get" in methods)


@cache
def settings_env_names() -> frozenset[str]:
    """The MPLSTM_* variables the service's Settings class reads."""
    from mplstm.service.settings import ENV_PREFIX, Settings

    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)


@cache
def metric_sample_names() -> frozenset[str]:
    """The Prometheus sample names /metrics exposes once every metric has a value."""
    from mplstm.service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.requests.labels("m", "/v1/predict", "success", "http").inc()
    metrics.observe_stages("m", {"decode": 0.01, "total": 0.02})
    metrics.batch_size.labels("m").observe(4)
    metrics.queue_depth.labels("m").set(1)
    metrics.model_ready.labels("m", "1").set(1)
    metrics.models_loaded.set(1)
    metrics.watch_cameras("m", ("front",))
    stream = metrics.stream
    stream.sessions.labels("m").set(1)
    stream.steps.labels("m").inc()
    stream.batch_size.labels("m").observe(4)
    stream.latency.labels("m").observe(0.01)
    stream.masked_steps.labels("m", "front").inc()
    stream.closed.labels("m", "1000").inc()
    stream.buffered.labels("m").set(3)
    return frozenset(
        sample.name for family in metrics.registry.collect() for sample in family.samples
    )


def load_script(path: Path) -> ModuleType:
    """A standalone script (deploy/healthcheck.py) imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """`argv` (after `mplstm`) parsed by the real CLI parser; a parse error fails the test."""
    from mplstm.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`mplstm {shlex.join(argv)}` is not a valid command") from exc


# -- Dockerfiles ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    text: str  # everything after the keyword, continuation lines joined

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD/ENTRYPOINT, e.g. ["mplstm", "serve"]."""
        value = json.loads(self.text)
        assert isinstance(value, list), f"{self.keyword} {self.text} is not in exec form"
        return value


@dataclass
class Stage:
    name: str | None
    base: str  # an image reference, or the name of an earlier stage
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def parent(self, stage: Stage) -> Stage | None:
        """The earlier stage `stage` builds on, None when it starts from an image."""
        return next((s for s in self.stages if s.name == stage.base), None)

    def effective(self, stage: Stage, keyword: str) -> Instruction | None:
        """The instruction in force for `stage` (USER, CMD, ...), inherited through stages."""
        current: Stage | None = stage
        while current is not None:
            found = current.last(keyword)
            if found is not None:
                return found
            current = self.parent(current)
        return None

    def image_of(self, stage: Stage) -> str:
        """The external image at the root of `stage`'s chain of stages."""
        current = stage
        while (parent := self.parent(current)) is not None:
            current = parent
        return current.base


_ARG_REF = re.compile(r"\$\{?(\w+)\}?")


def substitute(text: str, values: dict[str, str], default: str | None = None) -> str:
    """Replace $NAME / ${NAME} by `values` (or `default` for unknown names)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        return default if default is not None else match.group(0)

    return _ARG_REF.sub(one, text)


def _arg_pair(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip(), value.strip().strip('"')


def parse_dockerfile(path: Path) -> Dockerfile:
    """The stages of a Dockerfile, with global ARG defaults substituted into FROM lines."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined:
        keyword, _, text = line.partition(" ")
        keyword, text = keyword.upper(), text.strip()
        if keyword == "FROM":
            words = [w for w in text.split() if not w.startswith("--")]
            base = substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=base))
        elif not stages:
            if keyword == "ARG":
                key, value = _arg_pair(text)
                global_args[key] = value
        else:
            if keyword == "ARG":
                key, value = _arg_pair(text)
                stages[-1].args[key] = value or global_args.get(key, "")
            stages[-1].instructions.append(Instruction(keyword, text))
    return Dockerfile(path, stages)


def split_flags(text: str) -> tuple[dict[str, str], list[str]]:
    """`--from=x --chown=y a b` -> ({"from": "x", "chown": "y"}, ["a", "b"])."""
    flags: dict[str, str] = {}
    words = shlex.split(text)
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def mplstm_invocations(shell: str, values: dict[str, str]) -> Iterator[list[str]]:
    """The argv (after `mplstm`) of every `mplstm ...` command in a shell line; variables
    get `values`, or a placeholder path where unknown (a loop variable)."""
    text = substitute(shell, values, default="placeholder")
    for segment in re.split(r"&&|\|\||;|\bdo\b|\bthen\b", text):
        words = shlex.split(segment)
        if words and words[0] == "mplstm":
            yield words[1:]


# -- .dockerignore -------------------------------------------------------------------------


def dockerignore_excludes(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relative` (a path in the context) out, by .dockerignore rules:
    the last matching pattern wins, `!` re-includes, a matched folder covers its contents."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch.fnmatch(Path(p).name, glob[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, glob) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# -- compose and kustomize -----------------------------------------------------------------


@cache
def compose_file() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def kustomizations() -> list[Path]:
    """Every kustomization under k8s/ that is meant to be applied: the overlays, and the
    batch and training trees of the other parts (base is built through the overlays)."""
    found = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
    return [p for p in found if p.name != "base"]


_rendered: dict[Path, list[dict[str, Any]]] = {}


def render(kustomization: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a folder, as documents (cached per test session)."""
    if kustomization not in _rendered:
        kubectl = require_tool("kubectl")
        result = run_tool([kubectl, "kustomize", str(kustomization)])
        assert result.returncode == 0, f"kubectl kustomize {kustomization}:\n{result.stderr}"
        _rendered[kustomization] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[kustomization]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every Deployment, Job, StatefulSet, DaemonSet, CronJob."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        template = spec.get("template")
        if template is not None:
            yield doc, template["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
