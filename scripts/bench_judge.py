"""Benchmark of the OpenAI Batch judge loop at full request files: memory, poll cost, fetch time.

Not a test: run on demand, e.g.

    .venv/bin/python scripts/bench_judge.py --files 8           # 400,000 requests, 8 x 200 MB
    .venv/bin/python scripts/bench_judge.py --files 2 --pipeline /work/main/pipeline  # before

It writes `--files` committed request files at the Batch API's limits (50,000 requests and just
under 200 MiB each, one per mix shard, as `mix` sizes them), starts the test OpenAI server
(`tests.support.openai_server`) in its own process on the wall clock, so its memory is not the
judge's, and runs the judge loop (`Annotator.step()` until done, as `synthpref annotate` does)
in a child process with `--pipeline` first on its PYTHONPATH (the code under test). It prints,
as JSON and as a table:

- the judge process's peak RSS (`ru_maxrss`);
- the upload time (the first step, which uploads every file) and the time to read the ledgers;
- API calls per poll step while every batch is in flight (counted at the server, per route);
- the time from "every batch completed" (the first step that sees it) to "every result
  committed", and the whole run's wall time.

Figures are noisy on a shared machine: repeat a run when a figure matters.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-0123456789abcdef"  # tests.support.openai_server.DEFAULT_API_KEY
REQUESTS_PER_FILE = 50_000
FILE_BYTES = 200 * 1024 * 1024  # the Batch API's (and the test server's) input file limit


def request_line(custom_id: str, size: int) -> str:
    """One judge request of exactly `size` bytes (newline included): four numbered answers."""
    answers = "".join(
        f'<answer number="{n}">\nAnswer {n} to {custom_id}: PAD{n}\n</answer>\n'
        for n in (1, 2, 3, 4)
    )
    body = {
        "model": "judge-bench",
        "messages": [
            {"role": "system", "content": "Rate each answer from 1 to 5."},
            {"role": "user", "content": "Prompt: say something useful.\n" + answers},
        ],
        "max_tokens": 256,
        "temperature": 0.0,
    }
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    text = json.dumps(line)
    pad = size - 1 - len(text)
    assert pad >= 0, "line size too small"
    # Spread the padding over the four answers (each stays distinct, so ratings vary).
    parts = [pad // 4 + (1 if n < pad % 4 else 0) for n in range(4)]
    for n, extra in enumerate(parts, start=1):
        text = text.replace(f"PAD{n}", f"PAD{n}" + "x" * extra, 1)
    return text + "\n"


def build(store: Path, files: int, requests: int) -> None:
    """Committed request files (one per mix shard) and the mix shards' commit markers."""
    sys.path.insert(0, str(ROOT / "pipeline"))
    from synthpref import layout
    from synthpref.storage import LocalStorage

    storage = LocalStorage(store)
    size = FILE_BYTES // REQUESTS_PER_FILE - 1
    for shard in range(files):
        key = layout.request_file(shard, 0)
        with storage.open_writer(key) as stream:
            for index in range(requests):
                stream.write(request_line(f"s{shard:05d}-r{index:06d}", size))
        storage.commit(key, {"rows": requests})
        storage.commit(layout.mix_shard(shard), {"request_files": [{"key": key}]})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def route_counts(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}/_test/calls") as answer:
        counts: dict[str, int] = json.loads(answer.read())
    return counts


def spec_for(store: Path, base_url: str, poll_s: float) -> Any:
    from synthpref.spec import PreferenceRunSpec

    return PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": str(store / "unused")},
            "storage": {"uri": str(store)},
            "models": [{"name": f"m{i}", "path": f"m{i}"} for i in range(4)],
            "judge": {
                "model": "judge-bench",
                "pollIntervalSeconds": poll_s,
                "openai": {"baseUrl": base_url, "apiKeyEnv": "BENCH_JUDGE_KEY"},
            },
        }
    )


def judge_loop(store: Path, base_url: str, files: int, poll_s: float) -> dict[str, Any]:
    """The judge loop in this (fresh) process: step until done, timing its phases."""
    from synthpref.annotate.client import BatchClient
    from synthpref.annotate.engine import ENDED_STATUSES, Annotator
    from synthpref.annotate.ledger import Phase

    os.environ["BENCH_JUDGE_KEY"] = API_KEY
    spec = spec_for(store, base_url, poll_s)
    from synthpref.storage import LocalStorage

    client = BatchClient(spec.judge.openai)
    annotator = Annotator(spec, LocalStorage(store), "bench", client, shards=range(files))
    started = time.perf_counter()
    annotator.ledgers()
    ledgers_s = time.perf_counter() - started
    poll_calls: list[dict[str, int]] = []
    upload_s = completed_at = None
    steps = 0
    while True:
        before = route_counts(base_url)
        all_submitted = all(r.phase is Phase.SUBMITTED for r in annotator.ledgers())
        step_started = time.perf_counter()
        report = annotator.step()
        steps += 1
        if upload_s is None:
            upload_s = time.perf_counter() - step_started
        after = route_counts(base_url)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        if all_submitted:
            poll_calls.append(delta)
        ended = all(
            r.phase not in (Phase.PENDING, Phase.UPLOADED)
            and (
                r.phase is not Phase.SUBMITTED
                or (r.current is not None and r.current.status in ENDED_STATUSES)
            )
            for r in annotator.ledgers()
        )
        if completed_at is None and ended:
            completed_at = time.perf_counter()
        if report.done:
            break
        if report.transient_errors:
            print("transient:", report.transient_errors, file=sys.stderr, flush=True)
        if not report.progressed:
            time.sleep(poll_s)
    done_at = time.perf_counter()
    summary = annotator.summary()
    totals = [sum(d.values()) for d in poll_calls]
    return {
        "files": files,
        "requests": summary.requests,
        "requests_done": summary.done,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "ledgers_s": round(ledgers_s, 1),
        "upload_s": round(upload_s or 0.0, 1),
        "poll_steps": len(poll_calls),
        "api_calls_per_poll_step_max": max(totals, default=0),
        "api_calls_per_poll_step_mean": round(sum(totals) / len(totals), 1) if totals else 0,
        "poll_step_routes": poll_calls[-1] if poll_calls else {},
        "completed_to_committed_s": round(done_at - (completed_at or done_at), 1),
        "wall_s": round(done_at - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument(
        "--requests", type=int, default=REQUESTS_PER_FILE, help="per file (a smaller smoke run)"
    )
    parser.add_argument("--pipeline", type=Path, default=ROOT / "pipeline")
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--in-progress-s", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--judge", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.judge:
        figures = judge_loop(args.workdir, args.base_url, args.files, args.poll_s)
        print(json.dumps(figures))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="synthpref-bench-judge-"))
    server = None
    try:
        started = time.perf_counter()
        build(root / "store", args.files, args.requests)
        print(
            f"built {args.files} request files x {args.requests} requests "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.openai_server",
                "--port",
                str(port),
                "--in-progress-s",
                str(args.in_progress_s),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                route_counts(base_url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        paths = [str(args.pipeline), str(ROOT), os.environ.get("PYTHONPATH", "")]
        child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        command = [
            sys.executable,
            __file__,
            "--judge",
            "--workdir",
            str(root / "store"),
            "--base-url",
            base_url,
            "--files",
            str(args.files),
            "--poll-s",
            str(args.poll_s),
        ]
        output = subprocess.run(command, check=False, capture_output=True, text=True, env=child_env)
        if output.returncode != 0:
            sys.exit(f"the judge loop failed:\n{output.stderr}")
        figures = json.loads(output.stdout.strip().splitlines()[-1])
        figures["pipeline"] = str(args.pipeline)
        print(json.dumps(figures, indent=2))
        rows = [
            ("request files x requests", f"{figures['files']} x {args.requests}"),
            ("requests done", f"{figures['requests_done']} / {figures['requests']}"),
            ("judge peak RSS", f"{figures['peak_rss_mib']} MiB"),
            ("ledgers read/created", f"{figures['ledgers_s']} s"),
            ("upload (first step)", f"{figures['upload_s']} s"),
            ("poll steps (all in flight)", str(figures["poll_steps"])),
            ("API calls per poll step", f"max {figures['api_calls_per_poll_step_max']}, "
             f"mean {figures['api_calls_per_poll_step_mean']}"),
            ("routes of the last poll step", json.dumps(figures["poll_step_routes"])),
            ("all completed -> all committed", f"{figures['completed_to_committed_s']} s"),
            ("judge wall time", f"{figures['wall_s']} s"),
        ]  # fmt: skip
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
