"""`python -m tests.support.fake_engine ARGS`: the `synthpref` command with a stand-in for the
vLLM engine that prints the way a real engine start does, without loading vLLM.

Every way the real one writes is here: a child process (vLLM's engine core) writing to the
stdout and stderr it inherits, a library logger with its own handler on sys.stdout (vLLM's),
a Python warning (torch's FutureWarnings), a write to fd 2 from below Python (torch's C++
warnings), and one record of synthpref's own (which stays on the console). Every engine line
holds `MARK`. With $FAKE_ENGINE_FAIL set, the engine dies in its first batch: its worker
prints the exception that is the root cause (`ROOT_CAUSE`), then `ENGINE_LINES` more lines, as a
crashing engine core prints its own traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence

from synthpref.backends import factory
from synthpref.backends.base import ChatBackend, ChatRequest, ChatResult
from synthpref.spec import JudgeSpec, ModelSpec

MARK = "fake-engine"
FAIL_ENV = "FAKE_ENGINE_FAIL"
ENGINE_LINES = 30
OWN_WARNING = "synthpref's own warning while the engine starts"
CRASH = "fake engine core died"
ROOT_CAUSE = f"fake_engine.WeightsError: {MARK} weights unreadable"


def _child_prints(what: str, lines: int, first: str = "") -> None:
    """A process started now (as vLLM starts its engine core) printing to its inherited fds:
    `first` (if any), then `lines` numbered lines."""
    script = (
        "import sys\n"
        f"if {first!r}: print({first!r}, file=sys.stderr, flush=True)\n"
        f"for i in range({lines}):\n"
        "    stream = sys.stdout if i % 2 else sys.stderr\n"
        f"    line = f'(EngineCore) WARNING {MARK} {what} line {{i:02d}}'\n"
        "    print(line, file=stream, flush=True)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


class FakeEngine:
    """A `ChatBackend` that prints like an engine; answers every request with a short text."""

    def __init__(self, name: str) -> None:
        library = logging.getLogger("fake_vllm")  # vLLM's logger: its own handler on stdout
        if not library.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("(MainProcess) %(levelname)s %(message)s"))
            library.addHandler(handler)
            library.propagate = False
        library.warning("%s starting an engine for %s", MARK, name)
        warnings.warn(f"{MARK} reduce_op is deprecated", FutureWarning, stacklevel=1)
        os.write(2, f"[W1208 utils.cpp:68] Warning: {MARK} NUMA binding\n".encode())
        logging.getLogger("synthpref.fake_engine").warning(OWN_WARNING)
        _child_prints("start", ENGINE_LINES)

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if os.environ.get(FAIL_ENV):
            _child_prints("crash", ENGINE_LINES, first=ROOT_CAUSE)
            raise RuntimeError(CRASH)
        return [
            ChatResult(
                key=request.key,
                text="A short answer.",
                finish_reason="stop",
                prompt_tokens=3,
                completion_tokens=3,
            )
            for request in requests
        ]

    def close(self) -> None:
        pass


def fake_model_backend(model: ModelSpec) -> ChatBackend:
    return FakeEngine(model.name)


def fake_judge_backend(judge: JudgeSpec) -> ChatBackend:
    return FakeEngine(judge.model)


def main() -> None:
    from synthpref.cli import entrypoint

    factory.backend_for_model = fake_model_backend
    factory.backend_for_judge = fake_judge_backend
    sys.argv[0] = "synthpref"
    entrypoint()


if __name__ == "__main__":
    main()
