"""Locate (and build if needed) the control-plane binaries.

The binaries come from ``scripts/build-kube-binaries.sh``, which caches them under
``~/.cache/synthpref/kube/<version-key>/bin`` and returns at once when they are there.
``SYNTHPREF_KUBE_BIN_DIR`` points at a ready bin dir and skips the script altogether.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")


class BinariesError(RuntimeError):
    """The binaries could not be found or built."""


def build_script() -> Path:
    """Path of ``scripts/build-kube-binaries.sh`` in the source checkout."""
    override = os.environ.get("SYNTHPREF_KUBE_BUILD_SCRIPT")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "scripts" / "build-kube-binaries.sh"


def _check(bin_dir: Path) -> Path:
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise BinariesError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def build_binaries(*, quiet: bool = False) -> Path:
    """Build or reuse the binaries and return their directory.

    Runs the build script (a no-op when its cache is warm). Its progress goes to stderr
    unless ``quiet``. Raises `BinariesError` when the script fails.
    """
    override = os.environ.get("SYNTHPREF_KUBE_BIN_DIR")
    if override:
        return _check(Path(override))
    script = build_script()
    if not script.is_file():
        raise BinariesError(f"build script not found: {script}")
    proc = subprocess.run(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or "")[-4000:] if quiet else "(see stderr above)"
        raise BinariesError(f"{script} failed with exit code {proc.returncode}: {detail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise BinariesError(f"{script} printed no bin dir")
    return _check(Path(lines[-1].strip()))


def default_bin_dir() -> Path:
    """The bin dir, building the binaries first if they are missing."""
    return build_binaries(quiet=not sys.stderr.isatty())
