"""The Dockerfiles, read as text (no docker engine here): pinned bases, a non-root user,
a real `mplstm serve` entrypoint, a health check on a real route, and build context
files that exist and are not left out by .dockerignore."""

from __future__ import annotations

import json
import re

import pytest
from deploy_helpers import (
    DOCKERFILES,
    REPO,
    Dockerfile,
    Stage,
    dockerignore_excludes,
    dockerignore_patterns,
    load_script,
    mplstm_invocations,
    parse_cli,
    parse_dockerfile,
    served_get_paths,
    split_flags,
)

# What a serving stage must not install: torch, training/export extras, a compiler.
_FORBIDDEN_IN_SERVING = re.compile(
    r"\btorch\b|\[[^\]]*\b(export|train|dev)\b[^\]]*\]|build-essential|\bgcc\b|\bg\+\+"
)

# A RUN that removes packages (the GPU base image's compilers) names them without installing.
_PURGE = re.compile(r"\s*apt-get purge ")


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse_dockerfile(REPO / request.param)


def serving_stages(dockerfile: Dockerfile) -> list[Stage]:
    """Stages whose image runs the service: the final one and every stage built on it."""
    final = dockerfile.stages[-1]
    entry = dockerfile.effective(final, "ENTRYPOINT")
    assert entry is not None, f"{dockerfile.path.name}: the final stage has no ENTRYPOINT"
    return [s for s in dockerfile.stages if dockerfile.effective(s, "ENTRYPOINT") == entry]


def stage_chain(dockerfile: Dockerfile, stage: Stage) -> list[Stage]:
    chain = [stage]
    while (parent := dockerfile.parent(chain[-1])) is not None:
        chain.append(parent)
    return chain


def test_base_images_are_pinned_by_tag_never_latest(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        image = dockerfile.image_of(stage)
        assert "$" not in image, f"{dockerfile.path.name}: unresolved ARG in FROM {image}"
        name = image.rsplit("/", 1)[-1]
        assert ":" in name or "@sha256:" in image, f"{image} has no tag"
        assert not name.endswith(":latest"), f"{image} is not pinned"


def test_gpu_image_is_built_on_nvidia_tensorrt_and_cpu_image_on_python_311() -> None:
    gpu = parse_dockerfile(REPO / "Dockerfile.gpu")
    cpu = parse_dockerfile(REPO / "Dockerfile")
    assert {gpu.image_of(s).split(":")[0] for s in gpu.stages} == {"nvcr.io/nvidia/tensorrt"}
    # requires-python's 3.11, slim: the CPU image carries no compiler either.
    (cpu_base,) = {cpu.image_of(s) for s in cpu.stages}
    assert cpu_base.startswith("python:3.11.") and cpu_base.endswith("-slim-bookworm")


def test_serving_stages_run_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    for stage in serving_stages(dockerfile):
        user = dockerfile.effective(stage, "USER")
        assert user is not None, f"{dockerfile.path.name} stage {stage.name} runs as root"
        name = user.text.split(":")[0]
        assert name not in ("root", "0"), f"{dockerfile.path.name} stage {stage.name}: USER {name}"
        # Numeric, so that Kubernetes' runAsNonRoot can verify it.
        assert name.isdigit()


def test_entrypoint_and_cmd_are_a_real_serve_command_on_the_baked_models(
    dockerfile: Dockerfile,
) -> None:
    for stage in serving_stages(dockerfile):
        entrypoint = dockerfile.effective(stage, "ENTRYPOINT")
        cmd = dockerfile.effective(stage, "CMD")
        assert entrypoint is not None and cmd is not None
        argv = entrypoint.exec_form() + cmd.exec_form()
        assert argv[0] == "mplstm"
        args = parse_cli(argv[1:])
        assert args.command == "serve"
        assert args.host == "0.0.0.0"
        assert args.models == "/models"
    copies = [split_flags(i.text) for s in dockerfile.stages for i in s.instructions]
    assert ({}, ["models/", "/models/"]) in copies, "the demo models are not baked in at /models"


def test_serving_stages_expose_the_http_and_grpc_ports_they_serve_on(
    dockerfile: Dockerfile,
) -> None:
    for stage in serving_stages(dockerfile):
        chain = stage_chain(dockerfile, stage)
        env = " ".join(i.text for s in chain for i in s.instructions if i.keyword == "ENV")
        ports = dict(re.findall(r"MPLSTM_(PORT|GRPC_PORT)=(\d+)", env))
        exposed = dockerfile.effective(stage, "EXPOSE")
        assert exposed is not None and set(exposed.text.split()) == {
            ports["PORT"],
            ports["GRPC_PORT"],
        }


def test_every_mplstm_command_in_a_run_step_parses(dockerfile: Dockerfile) -> None:
    found = []
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            if instruction.keyword != "RUN":
                continue
            # RUN's own flags (--mount=..., --device=...) come before the shell line.
            shell = re.sub(r"^(--\S+\s+)+", "", instruction.text)
            for argv in mplstm_invocations(shell, stage.args):
                found.append(parse_cli(argv))
    if dockerfile.path.name == "Dockerfile.gpu":
        # The optional engines stage builds TensorRT engines with this image's TensorRT.
        assert [a.command for a in found] == ["export"] and found[0].tensorrt


# Every Dockerfile built from the repository root shares its .dockerignore: the training
# image's too.
ROOT_CONTEXT_DOCKERFILES = sorted(
    p.relative_to(REPO).as_posix()
    for p in [*REPO.glob("Dockerfile*"), *(REPO / "k8s").rglob("Dockerfile*")]
    if not p.name.endswith(".dockerignore")
)


@pytest.mark.parametrize("name", ROOT_CONTEXT_DOCKERFILES)
def test_every_copied_file_is_in_the_build_context(name: str) -> None:
    dockerfile = parse_dockerfile(REPO / name)
    patterns = dockerignore_patterns()
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            if instruction.keyword not in ("COPY", "ADD"):
                continue
            flags, words = split_flags(instruction.text)
            if "from" in flags:  # another stage or a named build context, not this repo
                continue
            for source in words[:-1]:
                assert (REPO / source).exists(), f"{dockerfile.path.name}: COPY {source} is missing"
                for path in [REPO / source, *(REPO / source).rglob("*")]:
                    relative = path.relative_to(REPO).as_posix()
                    if path.is_file() and "__pycache__" not in path.parts:
                        assert not dockerignore_excludes(relative, patterns), (
                            f"{dockerfile.path.name}: COPY {source} but .dockerignore drops {relative}"
                        )


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", "data/demo/manifest.jsonl", "runs/x/best.pt", ".git/HEAD"):
        assert dockerignore_excludes(path, patterns), path
    assert dockerignore_excludes("mplstm/__pycache__/cli.cpython-311.pyc", patterns)
    assert not dockerignore_excludes("mplstm/cli/__init__.py", patterns)


def test_healthcheck_runs_the_copied_script_against_a_served_route(dockerfile: Dockerfile) -> None:
    for stage in serving_stages(dockerfile):
        check = dockerfile.effective(stage, "HEALTHCHECK")
        assert check is not None, f"{dockerfile.path.name} stage {stage.name}: no HEALTHCHECK"
        command = json.loads(check.text.split(" CMD ", 1)[1])
        copies = {
            words[-1]: words[0]
            for s in stage_chain(dockerfile, stage)
            for i in s.instructions
            if i.keyword == "COPY"
            for flags, words in [split_flags(i.text)]
            if "from" not in flags
        }
        assert command[-1] in copies, f"HEALTHCHECK runs {command[-1]}, which is not COPY'd"
        assert load_script(REPO / copies[command[-1]]).READY_PATH in served_get_paths()


def test_serving_stages_install_no_torch_and_no_compiler(dockerfile: Dockerfile) -> None:
    for stage in serving_stages(dockerfile):
        for link in stage_chain(dockerfile, stage):
            for instruction in link.instructions:
                if instruction.keyword == "RUN" and not _PURGE.match(instruction.text):
                    hit = _FORBIDDEN_IN_SERVING.search(instruction.text)
                    assert hit is None, f"serving stage {link.name} installs {hit.group(0)!r}"


def test_gpu_serving_image_removes_the_compilers_its_base_image_ships() -> None:
    dockerfile = parse_dockerfile(REPO / "Dockerfile.gpu")
    runtime = dockerfile.stage("runtime")
    purges = [i.text for i in runtime.instructions if i.keyword == "RUN" and _PURGE.match(i.text)]
    assert purges, "the runtime stage keeps NVIDIA's development compilers"
    assert "gcc" in purges[0] and "cuda-nvcc" in purges[0]
    assert "--auto-remove" not in purges[0]  # could take CUDA runtime libraries along
