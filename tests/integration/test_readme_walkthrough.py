"""README "Your first run on a cluster", executed as written, the way a newcomer runs it: in a
fresh directory (the checkout's `charts/`, `examples/` and `.venv/`, nothing else), with no
AWS_* or OPENAI_* variable and no kubeconfig of its own, the section's two shell blocks run
with bash one after the other: the first starts the dev cluster with its services
(`synthpref dev cluster up --with-services --detach`: a control plane of its own, the S3 server
and the OpenAI-compatible test server) and takes its variables, the second installs the chart,
runs `examples/gateway-run.yaml`, copies the dataset's parts out and fetches the run report.

What a kubectl user sees of the finished run is checked on it afterwards: the report's
warnings as the ReportWarnings condition and Warning Events, no `Gpus: 1` for API-backed models,
no signal warning in the operator's log, the report's objects with their Content-Type, and a
retry asked of the Succeeded run answered by a RetryIgnored Event."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from synthpref.rows import PreferenceRow
from synthpref.storage import s3_client
from synthpref_operator.devcluster.services import SERVICE_VARIABLES

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(720)]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BUCKET = "synthpref-demo"
RUN = "gateway-run"
NS = "ml-data"


def walkthrough() -> list[str]:
    """The shell blocks of the README's "Your first run on a cluster", in order."""
    section = README.read_text(encoding="utf-8").split("### Your first run on a cluster", 1)[1]
    section = section.split("\n### ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the walkthrough: a dev-cluster block, then the run's block"
    return blocks


def test_the_section_says_to_run_setup_first_and_that_the_dev_cluster_needs_no_images() -> None:
    section = README.read_text(encoding="utf-8").split("### Your first run on a cluster", 1)[1]
    prose = " ".join(section.split("\n### ", 1)[0].split())
    assert "run `scripts/setup.sh`" in prose and "`synthpref: command not found`" in prose
    assert "`source .venv/bin/activate`" in prose
    assert "no images" in prose and "does not apply to it" in prose
    dev, run = walkthrough()
    assert "dev cluster up --with-services --detach" in dev
    assert 'eval "$(.venv/bin/synthpref dev cluster env)"' in dev
    assert "report open gateway-run -n ml-data" in run


def newcomer_env(tmp_path: Path, kube_bin_dir: Path) -> dict[str, str]:
    """The caller's environment without anything that points at a cluster or a service."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HELM_", "KUBECONFIG", "AWS_", "OPENAI_", "SYNTHPREF_"))
    }
    env |= {
        f"HELM_{d}_HOME": str(tmp_path / ".helm" / d.lower()) for d in ("CACHE", "CONFIG", "DATA")
    }
    env["SYNTHPREF_DEVCLUSTER_DIR"] = str(tmp_path / ".devcluster")  # not the user's own
    env["SYNTHPREF_KUBE_BIN_DIR"] = str(kube_bin_dir)  # the binaries setup built
    return env


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def test_first_run_on_the_dev_cluster_as_written(kube_bin_dir: Path, tmp_path: Path) -> None:
    for name in ("charts", "examples", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = newcomer_env(tmp_path, kube_bin_dir)
    dev, run = walkthrough()
    state: dict[str, Any] = {}
    try:
        # Both blocks in one shell: the first one's `eval` gives the second its variables.
        code, output = bash(f"{dev}\n{run}", tmp_path, env, timeout=600)
        assert code == 0, output
        assert f"{RUN}   Succeeded" in output, output
        state = json.loads((tmp_path / ".devcluster" / "state.json").read_text())
        assert sorted(state["services"]) == sorted(SERVICE_VARIABLES)
        check_dataset(tmp_path / "dataset")
        warnings = check_report(tmp_path, state)
        check_what_kubectl_shows(state, env, warnings)
    finally:
        subprocess.run(
            [str(tmp_path / ".venv" / "bin" / "synthpref"), "dev", "cluster", "down"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert not (tmp_path / ".devcluster" / "state.json").exists()
    for variable in ("OPENAI_BASE_URL", "AWS_ENDPOINT_URL_S3"):  # the services stopped too
        host, _, port = state["services"][variable].split("/")[2].partition(":")
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
            pass


def check_dataset(folder: Path) -> None:
    parts = sorted(p.name for p in folder.iterdir())
    assert parts and all(re.fullmatch(r"part-\d+\.jsonl", p) for p in parts), parts
    lines = [
        line for part in parts for line in (folder / part).read_text().splitlines() if line.strip()
    ]
    rows = [PreferenceRow.model_validate_json(line) for line in lines]
    assert len(rows) >= 20  # 24 prompts; a prompt whose answers all tie is dropped


def check_report(tmp_path: Path, state: dict[str, Any]) -> list[dict[str, str]]:
    """`synthpref report open` fetched the report; a browser gets each object's type. Returns
    the report's warnings."""
    fetched = tmp_path / f"{RUN}-report"
    assert (fetched / "index.html").read_text().startswith("<!DOCTYPE html>")
    warnings = json.loads((fetched / "warnings.json").read_text())["warnings"]
    services = state["services"]
    s3 = s3_client(
        services["AWS_ENDPOINT_URL_S3"],
        services["AWS_DEFAULT_REGION"],
        access_key_id=services["AWS_ACCESS_KEY_ID"],
        secret_access_key=services["AWS_SECRET_ACCESS_KEY"],
    )
    types = {
        "report/index.html": "text/html; charset=utf-8",
        "report/report.json": "application/json",
        "report/warnings.json": "application/json",
        "dataset/README.md": "text/markdown; charset=utf-8",
        "dataset/provenance.json": "application/json",
    }
    for key, content_type in types.items():
        head = s3.head_object(Bucket=BUCKET, Key=f"runs/{RUN}/{key}")
        assert head["ContentType"] == content_type, key
    return list(warnings)


def events(run: Any) -> list[dict[str, Any]]:
    """The run's Events (`run`: kubectl in the run's namespace)."""
    listed = run("get", "events", "--field-selector", f"involvedObject.name={RUN}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(listed)["items"]
    return items


def check_what_kubectl_shows(
    state: dict[str, Any], env: dict[str, str], warnings: list[dict[str, str]]
) -> None:
    kubectl = [str(Path(state["bin_dir"]) / "kubectl"), f"--kubeconfig={state['kubeconfig']}"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*kubectl, "-n", NS, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    describe = run("describe", "prun", RUN)
    assert "Gpus:" not in describe  # four backend: openai models, none with gpus set
    prun = json.loads(run("get", "prun", RUN, "-o", "json"))
    conditions = {c["type"]: c for c in prun["status"]["conditions"]}
    warned = conditions["ReportWarnings"]
    assert warnings, "the test server's judge rates by position: the report warns"
    assert (warned["status"], warned["reason"]) == ("True", "ReportWarnings")
    assert warnings[0]["message"] in warned["message"]
    reported = [e for e in events(run) if e["reason"] == "ReportWarning"]
    assert {e["type"] for e in reported} == {"Warning"}
    assert len(reported) == len(warnings)
    # The operator started without kopf's false warning about signals.
    log = run("logs", "deploy/synthpref")
    assert "synthpref operator starting" in log
    assert "OS signals are ignored" not in log

    # A retry asked of the Succeeded run redoes nothing and says so.
    run("annotate", "prun", RUN, "--overwrite", "synthpref.dev/retry=first-try")
    deadline = time.monotonic() + 60
    ignored: list[dict[str, Any]] = []
    while not ignored and time.monotonic() < deadline:
        time.sleep(1)
        ignored = [e for e in events(run) if e["reason"] == "RetryIgnored"]
    assert ignored, "no RetryIgnored Event"
    assert ignored[0]["type"] == "Normal"
    assert "synthpref.dev/retry=first-try ignored: the run Succeeded" in ignored[0]["message"]
    after = json.loads(run("get", "prun", RUN, "-o", "json"))["status"]
    assert after["phase"] == "Succeeded" and after["retryToken"] == "first-try"
