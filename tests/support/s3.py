"""Real S3 servers on loopback for tests, spoken to over HTTP by boto3: moto in server mode
(the tests' server), and the operator benchmark's choice of moto or a native one
(`tests/support/s3_server`, gofakes3), which costs the benchmark's cores far less."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moto.server import ThreadedMotoServer

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    """Create a fresh bucket on the server; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


ROOT = Path(__file__).resolve().parents[2]
# The S3 servers the operator benchmark can run as a process of its own.
S3_SERVERS = ("native", "moto")


def native_s3_server() -> Path:
    """The native S3 server's binary, built (or found in ~/.cache) by its build script."""
    script = ROOT / "scripts" / "build-s3-server.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}): {done.stderr[-2000:]}")
    return Path(done.stdout.split()[-1])


def s3_server_command(kind: str, port: int) -> list[str]:
    """The command line that serves S3 on 127.0.0.1:`port` with the server `kind`."""
    if kind == "native":
        return [str(native_s3_server()), "-addr", f"127.0.0.1:{port}"]
    if kind == "moto":
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    raise ValueError(f"unknown S3 server {kind!r} (one of {', '.join(S3_SERVERS)})")
