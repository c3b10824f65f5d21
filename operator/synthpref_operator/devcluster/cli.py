"""``dev`` command group: run the local control plane and test kubelet for development.

``dev cluster up`` builds (or reuses) the binaries, starts etcd, kube-apiserver,
kube-controller-manager and the test kubelet in the foreground, prints the ``export`` lines
to use the cluster and stops everything on Ctrl-C or SIGTERM. ``dev cluster env`` prints those
lines for the running cluster, ``dev cluster down`` stops it. The running cluster is recorded
in ``~/.cache/synthpref/devcluster/state.json`` (``SYNTHPREF_DEVCLUSTER_DIR`` overrides the
directory).

Run without the main CLI as ``python -m synthpref_operator.devcluster.cli cluster up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click


def state_dir() -> Path:
    """Directory holding the dev cluster's state file and work dir."""
    override = os.environ.get("SYNTHPREF_DEVCLUSTER_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "synthpref" / "devcluster"


def state_file() -> Path:
    """Path of the JSON file describing the running dev cluster."""
    return state_dir() / "state.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def read_state() -> dict[str, Any] | None:
    """The running cluster's state, or None when none is running."""
    try:
        state: dict[str, Any] = json.loads(state_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not _pid_alive(int(state.get("pid", 0))):
        return None
    return state


def env_lines(state: dict[str, Any]) -> list[str]:
    """Shell lines that point kubectl/helm at the cluster described by ``state``, and comments
    saying where its logs are (harmless under `eval`)."""
    lines = [
        f"export KUBECONFIG={shlex.quote(state['kubeconfig'])}",
        f"export PATH={shlex.quote(state['bin_dir'])}:$PATH",
    ]
    if state.get("pod_logs"):
        lines.append(f"# pod output (also through kubectl logs): {state['pod_logs']}")
    if state.get("control_plane_logs"):
        lines.append(f"# control-plane logs: {state['control_plane_logs']}")
    lines.append(f"# state directory ($SYNTHPREF_DEVCLUSTER_DIR): {state_dir()}")
    return lines


class _StopRequestedError(Exception):
    """Raised in the main thread by the SIGTERM handler."""


@click.group("dev")
def dev_group() -> None:
    """Developer tools (local Kubernetes control plane)."""


@dev_group.group("cluster")
def cluster_group() -> None:
    """A local control plane with a test kubelet that runs pods as local processes."""


@cluster_group.command("up")
@click.option("--gpus", default=1, show_default=True, help="GPU slots of the fake node.")
@click.option("--namespace", default=None, help="Only run pods of this namespace.")
def cluster_up(gpus: int, namespace: str | None) -> None:
    """Start the cluster in the foreground; stop it with Ctrl-C or `dev cluster down`."""
    from synthpref_operator.devcluster.binaries import BinariesError, build_binaries
    from synthpref_operator.devcluster.controlplane import ControlPlane, ControlPlaneError
    from synthpref_operator.devcluster.kubelet import TestKubelet

    existing = read_state()
    if existing is not None:
        raise click.ClickException(
            f"a dev cluster is already running (pid {existing['pid']}); "
            "use `dev cluster env` or `dev cluster down`"
        )
    try:
        bin_dir = build_binaries()
    except BinariesError as e:
        raise click.ClickException(str(e)) from e
    base = state_dir()
    work = base / "cluster"
    shutil.rmtree(work, ignore_errors=True)
    cp = ControlPlane(bin_dir, work)
    kubelet: TestKubelet | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _StopRequestedError

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        click.echo("starting etcd, kube-apiserver, kube-controller-manager ...", err=True)
        try:
            cp.start()
        except ControlPlaneError as e:
            raise click.ClickException(str(e)) from e
        kubelet = TestKubelet(
            cp.api_client(), gpus=gpus, namespace=namespace, work_dir=work / "kubelet"
        )
        kubelet.start()
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(cp.kubeconfig),
            "server": cp.server,
            "bin_dir": str(bin_dir),
            "work_dir": str(work),
            "pod_logs": str(kubelet.work_dir / "pods"),
            "control_plane_logs": str(cp.log_dir),
            "gpus": gpus,
            "started_at": time.time(),
        }
        base.mkdir(parents=True, exist_ok=True)
        state_file().write_text(json.dumps(state, indent=2))
        click.echo(
            f"cluster ready in {cp.startup_seconds:.1f}s at {cp.server}; "
            f"logs in {cp.log_dir}, pod output in {kubelet.work_dir / 'pods'}",
            err=True,
        )
        for line in env_lines(state):
            click.echo(line)
        click.echo("press Ctrl-C to stop", err=True)
        while True:
            time.sleep(1)
            cp.check_alive()
    except (KeyboardInterrupt, _StopRequestedError):
        click.echo("stopping ...", err=True)
    except ControlPlaneError as e:
        raise click.ClickException(str(e)) from e
    finally:
        signal.signal(signal.SIGTERM, old)
        if kubelet is not None:
            kubelet.stop()
        cp.stop(remove_work_dir=False)
        with contextlib.suppress(FileNotFoundError):
            state = json.loads(state_file().read_text())
            if state.get("pid") == os.getpid():
                state_file().unlink()


@cluster_group.command("env")
def cluster_env() -> None:
    """Print the export lines for the running cluster (use: eval "$(... cluster env)")."""
    state = read_state()
    if state is None:
        raise click.ClickException("no dev cluster is running (start one with `dev cluster up`)")
    for line in env_lines(state):
        click.echo(line)


@cluster_group.command("down")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for exit.")
def cluster_down(timeout: float) -> None:
    """Stop the running cluster (SIGTERM to the `cluster up` process)."""
    state = read_state()
    if state is None:
        click.echo("no dev cluster is running", err=True)
        return
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        raise click.ClickException(f"cluster process {pid} did not stop within {timeout}s")
    with contextlib.suppress(FileNotFoundError):
        state_file().unlink()
    click.echo("dev cluster stopped", err=True)


if __name__ == "__main__":
    dev_group()
