"""``dev`` command group: run the local control plane and test kubelet for development.

``dev cluster up`` builds (or reuses) the binaries, starts etcd, kube-apiserver,
kube-controller-manager and the test kubelet in the foreground, prints the ``export`` lines
to use the cluster and stops everything on Ctrl-C or SIGTERM. With ``--with-services`` it also
starts what a first run needs besides a cluster (`services.DevServices`: an S3 server and an
OpenAI-compatible test server) and the lines export their variables too. With ``--detach`` it
goes on in the background and returns once the cluster is ready. ``dev cluster env`` prints
those lines for the running cluster, ``dev cluster down`` stops it. The running cluster is
recorded in ``~/.cache/synthpref/devcluster/state.json`` (``SYNTHPREF_DEVCLUSTER_DIR``
overrides the directory).

The test kubelet runs every pod's command as a local process of this checkout's virtualenv
(`kubelet.py`): no container images are pulled or needed, also not for the Helm chart's
operator Deployment.

Run without the main CLI as ``python -m synthpref_operator.devcluster.cli cluster up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
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
    """Shell lines that point kubectl/helm at the cluster described by ``state`` (and clients
    at its services, when it runs them), and comments saying where its logs are (harmless
    under `eval`)."""
    from synthpref_operator.devcluster.services import SERVICE_VARIABLES

    # kubectl and helm, then the virtualenv's own commands (synthpref, and the AWS CLI that
    # scripts/setup.sh links there when the machine has none).
    path = [state["bin_dir"], *([state["venv_bin"]] if state.get("venv_bin") else [])]
    lines = [
        f"export KUBECONFIG={shlex.quote(state['kubeconfig'])}",
        f"export PATH={':'.join(shlex.quote(p) for p in path)}:$PATH",
    ]
    services: dict[str, str] = state.get("services") or {}
    if services:
        lines += [
            f"export {name}={shlex.quote(services[name])}"
            for name in SERVICE_VARIABLES
            if name in services
        ]
        lines.append(
            "# S3 and an OpenAI-compatible endpoint (made-up answers and ratings) run with the "
            "cluster (--with-services)"
        )
    else:
        lines.append(
            "# no S3 store or OpenAI-compatible endpoint runs with this cluster: start it with "
            "`dev cluster up --with-services`, or export OPENAI_BASE_URL, OPENAI_API_KEY, "
            "AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
            "AWS_DEFAULT_REGION for your own"
        )
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


def detach_log() -> Path:
    """Where a detached `dev cluster up` writes its output."""
    return state_dir() / "up.log"


def _detach(gpus: int, namespace: str | None, with_services: bool, timeout: float) -> None:
    """Run `cluster up` again as a process of its own (a new session, its output in
    `detach_log`) and return once its state file says it is ready, printing its env lines."""
    args = [sys.executable, "-m", "synthpref_operator.devcluster.cli", "cluster", "up"]
    args += ["--gpus", str(gpus)]
    if namespace is not None:
        args += ["--namespace", namespace]
    if with_services:
        args.append("--with-services")
    log_path = detach_log()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    click.echo(f"starting the dev cluster in the background (output: {log_path}) ...", err=True)
    deadline = time.monotonic() + timeout
    while True:
        state = read_state()
        if state is not None and state.get("pid") == proc.pid:
            break
        if proc.poll() is not None:
            raise click.ClickException(
                f"the dev cluster did not start (exit {proc.returncode}); its output "
                f"({log_path}) ends:\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.terminate()
            raise click.ClickException(
                f"the dev cluster was not ready within {timeout:g}s; see {log_path}"
            )
        time.sleep(0.5)
    for line in env_lines(state):
        click.echo(line)
    click.echo(
        f"dev cluster running in the background (pid {proc.pid}); "
        "`synthpref dev cluster down` stops it",
        err=True,
    )


@cluster_group.command("up")
@click.option("--gpus", default=1, show_default=True, help="GPU slots of the fake node.")
@click.option("--namespace", default=None, help="Only run pods of this namespace.")
@click.option(
    "--with-services",
    is_flag=True,
    help="Also start an S3 server and an OpenAI-compatible test server (from this checkout) "
    "and export their variables: what a first run needs besides the cluster.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Run in the background; return once the cluster is ready (stop it with "
    "`dev cluster down`).",
)
@click.option(
    "--timeout",
    default=1800.0,
    show_default=True,
    help="With --detach: seconds to wait for the cluster (a first start builds the binaries).",
)
def cluster_up(
    gpus: int, namespace: str | None, with_services: bool, detach: bool, timeout: float
) -> None:
    """Start the cluster in the foreground; stop it with Ctrl-C or `dev cluster down`."""
    from synthpref_operator.devcluster.binaries import BinariesError, build_binaries
    from synthpref_operator.devcluster.controlplane import ControlPlane, ControlPlaneError
    from synthpref_operator.devcluster.kubelet import TestKubelet
    from synthpref_operator.devcluster.services import DevServices, ServicesError

    existing = read_state()
    if existing is not None:
        raise click.ClickException(
            f"a dev cluster is already running (pid {existing['pid']}); "
            "use `dev cluster env` or `dev cluster down`"
        )
    if detach:
        _detach(gpus, namespace, with_services, timeout)
        return
    try:
        bin_dir = build_binaries()
    except BinariesError as e:
        raise click.ClickException(str(e)) from e
    base = state_dir()
    work = base / "cluster"
    shutil.rmtree(work, ignore_errors=True)
    cp = ControlPlane(bin_dir, work)
    kubelet: TestKubelet | None = None
    services: DevServices | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _StopRequestedError

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        service_env: dict[str, str] = {}
        if with_services:
            click.echo("starting the S3 server and the OpenAI-compatible server ...", err=True)
            services = DevServices(cp.log_dir)
            try:
                service_env = services.start()
            except ServicesError as e:
                raise click.ClickException(str(e)) from e
        click.echo("starting etcd, kube-apiserver, kube-controller-manager ...", err=True)
        try:
            cp.start()
        except ControlPlaneError as e:
            raise click.ClickException(str(e)) from e
        # The services' variables are not handed to the pods: as on a real cluster, the chart
        # (workers.env, operator.env) and the run's Secrets give them what they use.
        kubelet = TestKubelet(
            cp.api_client(), gpus=gpus, namespace=namespace, work_dir=work / "kubelet"
        )
        kubelet.start()
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(cp.kubeconfig),
            "server": cp.server,
            "bin_dir": str(bin_dir),
            "venv_bin": str(Path(sys.executable).parent),
            "work_dir": str(work),
            "pod_logs": str(kubelet.work_dir / "pods"),
            "control_plane_logs": str(cp.log_dir),
            "gpus": gpus,
            "started_at": time.time(),
            "services": service_env,
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
            if services is not None:
                services.check_alive()
    except (KeyboardInterrupt, _StopRequestedError):
        click.echo("stopping ...", err=True)
    except (ControlPlaneError, ServicesError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        signal.signal(signal.SIGTERM, old)
        if kubelet is not None:
            kubelet.stop()
        cp.stop(remove_work_dir=False)
        if services is not None:
            services.stop()
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
