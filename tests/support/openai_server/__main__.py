"""Run the test server by hand: `python -m tests.support.openai_server --port N`."""

from __future__ import annotations

import argparse
import time

from tests.support.openai_server.app import OpenAIServer
from tests.support.openai_server.records import BatchScript, ScriptedClock, WallClock
from tests.support.openai_server.wire import DEFAULT_API_KEY


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server (manual use)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--tick", type=float, default=None, help="scripted seconds per request")
    parser.add_argument(
        "--in-progress-s", type=float, default=None, help="seconds each batch is in progress"
    )
    args = parser.parse_args()
    clock = WallClock() if args.tick is None else ScriptedClock(tick=args.tick)
    script = (
        BatchScript()
        if args.in_progress_s is None
        else BatchScript(in_progress_s=args.in_progress_s)
    )
    server = OpenAIServer(
        api_key=args.api_key, clock=clock, port=args.port, batch_script=lambda info: script
    ).start()
    print(f"serving {server.base_url} (API key {args.api_key!r}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
