"""`synthpref operator run` refuses to start with one `Error:` line that says what to fix: no
kubeconfig, an API server that does not answer, the CRD missing, the metrics port in use. The
API server here is a loopback HTTP server speaking the discovery protocol (failure injection:
a cluster without the CRD, which the shared test control plane cannot be made into)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from synthpref.spec import API_GROUP, API_VERSION

ROOT = Path(__file__).resolve().parents[2]


def kubeconfig(path: Path, server: str) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(document))
    return path


def discovery(resources: list[str] | None) -> Iterator[str]:
    """An API server that serves /apis/synthpref.dev/v1alpha1 with `resources`, or 404."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if resources is None or self.path != f"/apis/{API_GROUP}/{API_VERSION}":
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps(
                {
                    "kind": "APIResourceList",
                    "groupVersion": f"{API_GROUP}/{API_VERSION}",
                    "resources": [
                        {
                            "name": r,
                            "singularName": "",
                            "namespaced": True,
                            "kind": "X",
                            "verbs": [],
                        }
                        for r in resources
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def operator_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    command = [sys.executable, "-m", "synthpref", "operator", "run", "--namespace", "ns", *args]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def test_no_kubeconfig(tmp_path: Path) -> None:
    line = error_line(operator_run(tmp_path, "--metrics-port", "0"))
    assert line.startswith("Error: no Kubernetes credentials: not running in a cluster")
    assert "pass --kubeconfig PATH or set KUBECONFIG" in line


def test_api_server_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")
    line = error_line(operator_run(tmp_path, "--kubeconfig", str(config), "--metrics-port", "0"))
    assert line.startswith(f"Error: cannot reach the API server at http://127.0.0.1:{port}")


@pytest.mark.parametrize("resources", [None, ["other"]])
def test_crd_missing(tmp_path: Path, resources: list[str] | None) -> None:
    for server in discovery(resources):
        config = kubeconfig(tmp_path / "kc", server)
        line = error_line(
            operator_run(tmp_path, "--kubeconfig", str(config), "--metrics-port", "0")
        )
    assert "kubectl apply -f crds/preferenceruns.synthpref.dev.yaml" in line, line


def test_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for server in discovery(["preferenceruns"]):
            config = kubeconfig(tmp_path / "kc", server)
            result = operator_run(
                tmp_path,
                "--kubeconfig",
                str(config),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
            )
    line = error_line(result)
    assert line.startswith(f"Error: cannot serve /metrics on 127.0.0.1:{port}"), line
    assert "pass --metrics-port with a free port" in line
