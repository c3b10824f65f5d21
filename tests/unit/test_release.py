"""The release workflow (.github/workflows/release.yml) pushes the images the chart and the
operator point at: image.repository + appVersion for the operator, workers.image and
workers.cpuImage (the operator's OperatorSettings.image / .cpu_image), one per Dockerfile in
images/, for the platforms its base allows, with SBOM and provenance; the chart goes to the OCI
repository after them. Its version step runs here as written (with the tests' helm). The CI
workflow runs scripts/test.sh on pull requests."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref_operator.settings import OperatorSettings
from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CHART = ROOT / "charts" / "synthpref"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def workflow(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as true
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return dict(loaded)


def chart() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def step_using(job: dict[str, Any], action: str) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith(f"{action}@")]
    return dict(step)


def run_version_step(ref_name: str, tmp_path: Path) -> tuple[int, dict[str, str], str]:
    """The version job's `chart` step, run as written in the repository root: its exit
    status, what it wrote to $GITHUB_OUTPUT, and its stdout/stderr."""
    job = workflow("release.yml")["jobs"]["version"]
    (step,) = [s for s in job["steps"] if s.get("id") == "chart"]
    output = tmp_path / "github-output"
    output.write_text("")
    env = {
        **os.environ,
        "PATH": f"{tools.helm().parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_REF_NAME": ref_name,
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    # GitHub runs `run:` with `bash --noprofile --norc -eo pipefail {0}`
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return done.returncode, outputs, done.stdout + done.stderr


def resolve(text: str, context: dict[str, str]) -> str:
    """`${{ a.b }}` expressions replaced by context["a.b"] (every one must be known)."""

    def value(match: re.Match[str]) -> str:
        assert match[1] in context, f"unknown expression {match[1]!r} in {text!r}"
        return context[match[1]]

    return EXPRESSION.sub(value, text)


def pushed(tmp_path: Path) -> dict[str, dict[str, str]]:
    """The image each matrix entry of the images job pushes -> its build-push-action inputs,
    every expression resolved (the versions by running the version step)."""
    release = workflow("release.yml")
    app_version = chart()["appVersion"]
    code, outputs, log = run_version_step(f"v{app_version}", tmp_path)
    assert code == 0, log
    job = release["jobs"]["images"]
    assert job["needs"] == "version"
    step = step_using(job, "docker/build-push-action")
    steps = {f"steps.chart.outputs.{k}": v for k, v in outputs.items()}
    context = {f"env.{k}": str(v) for k, v in release["env"].items()}
    context |= {
        f"needs.version.outputs.{name}": resolve(str(ref), steps)
        for name, ref in release["jobs"]["version"]["outputs"].items()
    }
    out = {}
    for entry in job["strategy"]["matrix"]["include"]:
        scope = context | {f"matrix.{k}": str(v) for k, v in entry.items()}
        # action inputs are strings: a YAML true is "true"
        inputs = {
            k: resolve(str(v).lower() if isinstance(v, bool) else str(v), scope)
            for k, v in step["with"].items()
        }
        out[inputs["tags"]] = inputs
    return out


def test_release_runs_on_version_tags() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {"contents": "read"}


def test_version_step_reads_the_chart_and_refuses_another_tag(tmp_path: Path) -> None:
    meta = chart()
    code, outputs, log = run_version_step(f"v{meta['appVersion']}", tmp_path)
    assert code == 0, log
    assert outputs == {"app-version": meta["appVersion"], "chart-version": meta["version"]}

    code, outputs, log = run_version_step("v99.0.0", tmp_path)
    assert code != 0
    assert f"is not v{meta['appVersion']}" in log
    assert outputs == {}


def test_pushed_images_are_the_ones_the_chart_and_the_operator_use(tmp_path: Path) -> None:
    images = pushed(tmp_path)
    v, app_version = values(), chart()["appVersion"]
    assert v["image"]["tag"] == ""  # the operator's tag is the appVersion
    from_chart = {
        f"{v['image']['repository']}:{app_version}",
        v["workers"]["image"],
        v["workers"]["cpuImage"],
    }
    defaults = OperatorSettings()
    assert set(images) == from_chart
    assert {defaults.image, defaults.cpu_image} <= set(images)


def test_every_image_is_built_from_its_dockerfile_with_sbom_and_provenance(
    tmp_path: Path,
) -> None:
    images = pushed(tmp_path)
    dockerfiles = {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}
    assert len(dockerfiles) == len(images) == 3
    for ref, inputs in images.items():
        name = ref.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        assert name in dockerfiles, ref
        assert inputs["file"] == f"images/{name}/Dockerfile"
        assert (ROOT / inputs["file"]).is_file()
        assert inputs["context"] == "."  # the Dockerfiles copy from the repository root
        assert inputs["push"] == "true"
        assert inputs["sbom"] == "true"
        assert inputs["provenance"] == "mode=max"
        # the wheel's version the Dockerfile checks is the tag's
        assert inputs["build-args"] == f"SYNTHPREF_VERSION={ref.rsplit(':', 1)[1]}"
        platforms = set(inputs["platforms"].split(","))
        if name == "worker":
            assert platforms == {"linux/amd64"}  # the CUDA vLLM base: see the workflow
        else:
            assert platforms == {"linux/amd64", "linux/arm64"}


def test_chart_is_pushed_to_the_oci_repository_after_the_images() -> None:
    release = workflow("release.yml")
    job = release["jobs"]["chart"]
    assert set(job["needs"]) == {"version", "images"}
    assert release["env"]["CHART_REPOSITORY"] == "oci://ghcr.io/synthpref/charts"
    script = "\n".join(str(s.get("run", "")) for s in job["steps"])
    assert "helm package charts/synthpref --destination dist" in script
    assert 'helm push "dist/synthpref-$CHART_VERSION.tgz" "$CHART_REPOSITORY"' in script
    (push,) = [s for s in job["steps"] if "helm push" in str(s.get("run", ""))]
    assert push["env"]["CHART_VERSION"] == "${{ needs.version.outputs.chart-version }}"
    # the helm of the workflow is the helm of the tests
    build = (ROOT / "scripts" / "build-kube-binaries.sh").read_text()
    match = re.search(r'HELM_VERSION="\$\{HELM_VERSION:-(v[\d.]+)\}"', build)
    assert match is not None
    assert release["env"]["HELM_VERSION"] == match[1]


@pytest.mark.parametrize("job", ["images", "chart"])
def test_only_the_pushing_jobs_may_write_packages(job: str) -> None:
    release = workflow("release.yml")
    assert release["jobs"][job]["permissions"] == {"contents": "read", "packages": "write"}
    assert "permissions" not in release["jobs"]["version"]


def test_ci_runs_the_test_command_on_pull_requests() -> None:
    ci = workflow("ci.yml")
    assert ci["on"] == {"pull_request": None}
    (job,) = ci["jobs"].values()
    assert [s["run"] for s in job["steps"] if "run" in s] == ["scripts/test.sh"]
