"""The command-line tools some unit tests run, each found (or built, the first time on a
machine) by the script that caches it under ~/.cache/synthpref: helm (with the kube binaries),
Prometheus' rule checker (tools/rulecheck) and actionlint (tools/actionlint)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from synthpref_operator.devcluster.binaries import build_binaries

ROOT = Path(__file__).resolve().parents[2]


def _built_by(script: str) -> Path:
    """The binary a scripts/build-*.sh builds or finds: the last line it prints."""
    path = ROOT / "scripts" / script
    done = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path} failed ({done.returncode}): {done.stderr[-2000:]}")
    return Path(done.stdout.split()[-1])


@functools.cache
def helm() -> Path:
    return build_binaries(quiet=True) / "helm"


@functools.cache
def rulecheck() -> Path:
    return _built_by("build-rulecheck.sh")


@functools.cache
def actionlint() -> Path:
    return _built_by("build-actionlint.sh")
