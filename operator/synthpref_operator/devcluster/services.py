"""What a first run needs besides the cluster, as local processes: `dev cluster up --with-services`.

A PreferenceRun on a cluster reads and writes S3 and calls an OpenAI-compatible endpoint; the
dev cluster provides neither by itself. `DevServices` starts, from this checkout:

- the project's own S3 server (`tests/support/s3_server`: gofakes3 in memory, buckets made on
  first use), built by `scripts/build-s3-server.sh` (cached; `scripts/setup.sh` builds it);
- the OpenAI-compatible test server (`python -m tests.support.openai_server`): Chat Completions,
  Files and the Batch API, whose answers and ratings are made up from a hash of the request
  (real answers need a real endpoint: a vLLM server, `vllm serve MODEL`, or a hosted API).

Both listen on free loopback ports and die with the process that started them. `env` is what
a client needs to use them: OPENAI_BASE_URL and OPENAI_API_KEY, AWS_ENDPOINT_URL_S3 and fixed
dev credentials (the S3 server checks none). Their logs are `s3-server.log` and
`openai-server.log` next to the control plane's.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from synthpref_operator.devcluster.controlplane import free_port, spawn, tail_file, terminate

# The repository root of this checkout (the package is installed editable from it).
CHECKOUT = Path(__file__).resolve().parents[3]
S3_BUILD_SCRIPT = "scripts/build-s3-server.sh"
OPENAI_SERVER_MODULE = "tests.support.openai_server"
# Fixed credentials of the dev services: nothing secret, the same on every machine.
DEV_OPENAI_API_KEY = "sk-synthpref-dev"
DEV_AWS_ACCESS_KEY_ID = "synthpref-dev"
DEV_AWS_SECRET_ACCESS_KEY = "synthpref-dev-secret"  # a fixed dev value, nothing secret
DEV_AWS_REGION = "us-east-1"
# The variables a first run needs, in the order `dev cluster env` prints them.
SERVICE_VARIABLES = (
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


class ServicesError(RuntimeError):
    """A service could not be built or started; the message says what to do."""


class DevServices:
    """The S3 server and the OpenAI-compatible test server; `start`, then `stop`."""

    def __init__(self, log_dir: Path, checkout: Path = CHECKOUT, timeout: float = 60.0) -> None:
        self.log_dir = log_dir
        self.checkout = checkout
        self.timeout = timeout
        self.env: dict[str, str] = {}
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self) -> dict[str, str]:
        """Start both and wait until they answer; returns `env` (raises `ServicesError`)."""
        missing = [
            p
            for p in (S3_BUILD_SCRIPT, "tests/support/openai_server/__main__.py")
            if not (self.checkout / p).is_file()
        ]
        if missing:
            raise ServicesError(
                f"--with-services runs servers from a checkout of synthpref, and "
                f"{self.checkout} lacks {', '.join(missing)}; run it from a checkout (with "
                "scripts/setup.sh done), or bring your own S3 store and OpenAI-compatible "
                "endpoint"
            )
        try:
            s3 = self._start_s3()
            openai = self._start_openai()
        except BaseException:
            self.stop()
            raise
        self.env = {
            "OPENAI_BASE_URL": openai,
            "OPENAI_API_KEY": DEV_OPENAI_API_KEY,
            "AWS_ENDPOINT_URL_S3": s3,
            "AWS_ACCESS_KEY_ID": DEV_AWS_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DEV_AWS_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": DEV_AWS_REGION,
        }
        return dict(self.env)

    def stop(self) -> None:
        for proc, log in reversed(self._procs):
            terminate(proc, timeout=5.0)
            log.close()
        self._procs.clear()

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._procs]

    def check_alive(self) -> None:
        """Raise `ServicesError` when a service has exited."""
        for proc, log in self._procs:
            if proc.poll() is not None:
                raise ServicesError(
                    f"{Path(log.name).stem} exited with code {proc.returncode}\n"
                    f"{tail_file(Path(log.name), 20)}"
                )

    # ---- the two servers

    def _s3_binary(self) -> Path:
        script = self.checkout / S3_BUILD_SCRIPT
        try:
            done = subprocess.run(
                ["bash", str(script)],
                cwd=self.checkout,
                capture_output=True,
                text=True,
                check=False,
                timeout=1800,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ServicesError(f"{S3_BUILD_SCRIPT} could not run: {error}") from None
        lines = done.stdout.split()
        if done.returncode != 0 or not lines:
            raise ServicesError(
                f"{S3_BUILD_SCRIPT} failed (exit {done.returncode}); run scripts/setup.sh "
                f"first (it installs Go and builds the S3 server):\n{done.stderr[-2000:]}"
            )
        return Path(lines[-1])

    def _start_s3(self) -> str:
        binary = self._s3_binary()
        port = free_port()
        self._spawn("s3-server", [str(binary), "-addr", f"127.0.0.1:{port}"])
        url = f"http://127.0.0.1:{port}"
        self._wait_http("s3-server", url + "/", ok_statuses=range(200, 500))
        return url

    def _start_openai(self) -> str:
        port = free_port()
        self._spawn(
            "openai-server",
            [
                sys.executable,
                "-m",
                OPENAI_SERVER_MODULE,
                "--port",
                str(port),
                "--api-key",
                DEV_OPENAI_API_KEY,
            ],
        )
        self._wait_http("openai-server", f"http://127.0.0.1:{port}/_test/calls", range(200, 300))
        return f"http://127.0.0.1:{port}/v1"

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        proc, log = spawn(args, self.log_dir / f"{name}.log", cwd=self.checkout)
        self._procs.append((proc, log))

    def _wait_http(self, name: str, url: str, ok_statuses: range) -> None:
        proc, log = self._procs[-1]
        deadline = time.monotonic() + self.timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServicesError(
                    f"{name} exited with code {proc.returncode} during start-up\n"
                    f"{tail_file(Path(log.name), 20)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status in ok_statuses:
                        return
                    last = f"HTTP {reply.status}"
            except urllib.error.HTTPError as error:
                if error.code in ok_statuses:
                    return
                last = f"HTTP {error.code}"
            except OSError as error:  # refused, reset, timed out
                last = repr(error)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
        raise ServicesError(f"{name} did not answer at {url} in {self.timeout:g}s (last: {last})")
