"""README "Your first run on a cluster", executed as written: its shell block runs with bash
against the session's control plane (the test kubelet runs the chart's operator and the
workers as local processes), moto standing in for S3 and the OpenAI-compatible test server for
the endpoint, in the test's namespace instead of `ml-data`. It must end with the dataset's
parts copied out, without their commit markers."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from synthpref.rows import PreferenceRow
from synthpref.spec import load_run
from synthpref.storage import s3_client
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer
from tests.support.s3 import FAKE_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BUCKET = "synthpref-demo"


def walkthrough() -> str:
    """The shell block of the README's "Your first run on a cluster"."""
    section = README.read_text(encoding="utf-8").split("### Your first run on a cluster", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no sh block in the walkthrough"
    return match.group(1)


def empty_bucket(endpoint: str) -> None:
    """The example's bucket is fixed: start without it (as a newcomer does)."""
    s3 = s3_client(endpoint, "us-east-1")
    with contextlib.suppress(s3.exceptions.NoSuchBucket):
        for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])
        s3.delete_bucket(Bucket=BUCKET)


def test_first_run_on_a_cluster_as_written(
    kube_bin_dir: Path,
    kubeconfig: Path,
    namespace: str,
    s3_endpoint: str,
    tmp_path: Path,
    test_kubelet: Any,
) -> None:
    empty_bucket(s3_endpoint)
    # A fresh directory, as the README's relative paths expect a checkout.
    for name in ("charts", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = walkthrough().replace("-n ml-data", f"-n {namespace}")
    spec = load_run(ROOT / "examples" / "gateway-run.yaml").spec
    models = {m.path for m in spec.models} | {spec.judge.model}
    with OpenAIServer(models=models) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        env |= {
            f"HELM_{d}_HOME": str(tmp_path / ".helm" / d.lower())
            for d in ("CACHE", "CONFIG", "DATA")
        }
        env |= {
            "KUBECONFIG": str(kubeconfig),
            "PATH": os.pathsep.join(
                [str(kube_bin_dir), str(Path(sys.executable).parent), env["PATH"]]
            ),
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": DEFAULT_API_KEY,
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            **FAKE_CREDENTIALS,
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, output
    assert "gateway-run   Succeeded" in done.stdout, output
    parts = sorted(p.name for p in (tmp_path / "dataset").iterdir())
    assert parts and all(re.fullmatch(r"part-\d+\.jsonl", p) for p in parts), parts
    lines = [
        line
        for part in parts
        for line in (tmp_path / "dataset" / part).read_text().splitlines()
        if line.strip()
    ]
    rows = [PreferenceRow.model_validate_json(line) for line in lines]
    assert len(rows) >= 20  # 24 prompts; a prompt whose answers all tie is dropped
    # The run first (its finalizer needs the operator), then the operator.
    for command in (
        ["kubectl", "delete", "prun", "gateway-run", "-n", namespace, "--timeout=60s"],
        ["helm", "uninstall", "synthpref", "-n", namespace, "--wait"],
    ):
        subprocess.run(command, env=env, capture_output=True, check=False, timeout=120)
