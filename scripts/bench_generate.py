"""Benchmark of the generate stage against plain vLLM: tokens/s of each, their ratio, peak RSS.

Not a test: run on demand, e.g.

    .venv/bin/python scripts/bench_generate.py                       # 32 prompts x 32 tokens
    .venv/bin/python scripts/bench_generate.py --prompts 64 --max-tokens 64 --rounds 5

One vLLM engine on the real small model (SmolLM2-135M-Instruct, built by `synthpref dev models`)
serves both sides, so they differ only in what is measured:

- plain: `vllm.LLM.generate` on the prompts, already rendered through the chat template, with the
  same sampling parameters and per-prompt seeds the stage uses (so both make the same tokens);
- stage: `run_generate` end to end on a fresh local storage each round: read the prompt shards,
  render and tokenize every prompt, generate, write the answer shards and commit them.

Rounds are interleaved (plain first in odd rounds, the stage first in even ones) after one
warm-up of each; tokens/s is completion tokens over wall time, and the ratio compares the
medians (goal: the stage at >= 0.95x plain vLLM). Peak RSS: of this process (the stage's
worker, holding the engine client) and of the process tree with vLLM's engine process, sampled
during one more, untimed stage run (the sampling thread would slow a timed one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from synthpref import layout
from synthpref.backends.base import ChatRequest, ChatResult
from synthpref.backends.vllm_offline import VllmChatBackend
from synthpref.jsonl import read_rows
from synthpref.realmodel import build_real_model
from synthpref.rows import PromptRow
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.generate import chat_request, run_generate
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "prompts" / "quickstart.jsonl"
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True}
MAX_MODEL_LEN = 1024


class Lent:
    """The benchmark's engine lent to the stage, which closes its backend when done."""

    def __init__(self, backend: VllmChatBackend) -> None:
        self.backend = backend

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return self.backend.complete(requests)

    def close(self) -> None:
        pass


class TreePeak:
    """Peak RSS of this process plus its children, sampled every 50 ms while active."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            processes = [me, *me.children(recursive=True)]
            total = 0
            for process in processes:
                with suppress(psutil.Error):  # a process that just ended
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)

    @contextmanager
    def active(self) -> Iterator[None]:
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()


def write_prompts(path: Path, count: int) -> None:
    """`count` distinct prompts: the quickstart's, numbered when repeated."""
    texts = [json.loads(line)["text"] for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8") as file:
        for i in range(count):
            text = texts[i % len(texts)]
            if i >= len(texts):
                text = f"{text} (Variant {i // len(texts) + 1}.)"
            file.write(json.dumps({"text": text}) + "\n")


def bench_spec(root: Path, model: Path, shard_size: int, max_tokens: int) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": str(root / "prompts.jsonl"), "shardSize": shard_size},
            "storage": {"uri": str(root / "store")},
            "models": [
                {
                    "name": "smol",
                    "path": str(model),
                    "gpus": 0,
                    "maxModelLen": MAX_MODEL_LEN,
                    "engineArgs": ENGINE_ARGS,
                    "sampling": {"temperature": 0.8, "topP": 0.95, "maxTokens": max_tokens},
                    "errorBudget": 1.0,
                },
                {"name": "unused", "path": "unused"},  # a spec needs two models to mix
            ],
            "mix": {"responsesPerPrompt": 2},
        }
    )


def plain_inputs(
    backend: VllmChatBackend, spec: PreferenceRunSpec, prompts: list[PromptRow]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """What plain vLLM is given: token ids through the chat template, and the sampling
    parameters with the seeds the stage uses."""
    from vllm import SamplingParams

    model = spec.models[0]
    inputs, params = [], []
    for prompt in prompts:
        request = chat_request(model, prompt)
        inputs.append({"prompt_token_ids": backend.render(request.messages)})
        params.append(
            SamplingParams(
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=request.max_tokens,
                seed=request.seed,
            )
        )
    return inputs, params


def run_plain(backend: VllmChatBackend, inputs: list[dict[str, Any]], params: list[Any]) -> int:
    outputs = backend.llm.generate(inputs, params, use_tqdm=False)
    return sum(len(output.outputs[0].token_ids) for output in outputs)


def fresh_store(spec: PreferenceRunSpec, root: Path) -> LocalStorage:
    """The prepared prompt shards in a new storage, so the stage finds nothing committed."""
    store = Path(spec.storage.uri)
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(root / "prepared", store)
    return LocalStorage(store)


def run_stage(backend: VllmChatBackend, spec: PreferenceRunSpec, storage: LocalStorage) -> int:
    """One end-to-end stage run: read, render, generate, write and commit every shard."""
    summary = run_generate(spec, storage, "smol", backend_factory=lambda _: Lent(backend))
    return summary.completion_tokens


def timed(function: Any, *args: Any) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = function(*args)
    return tokens, time.perf_counter() - started


def main() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # no per-request INFO lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=None, help="default: all in one shard")
    parser.add_argument("--model", type=Path, default=None, help="default: the real small model")
    args = parser.parse_args()

    model = args.model or build_real_model(ROOT / ".models")
    root = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        write_prompts(root / "prompts.jsonl", args.prompts)
        spec = bench_spec(root, model, args.shard_size or args.prompts, args.max_tokens)
        prepared = LocalStorage(root / "prepared")
        run_prepare(spec, prepared)
        prompts = [
            row
            for shard in range(prepared.read_json(layout.PROMPTS_MANIFEST)["shards"])
            for row in read_rows(prepared, layout.prompt_shard(shard), PromptRow)
        ]
        backend = VllmChatBackend.from_model_spec(spec.models[0])
        print(f"engine ready in {backend.engine_start_seconds:.1f} s; {model}")
        try:
            inputs, params = plain_inputs(backend, spec, prompts)
            run_plain(backend, inputs, params)  # warm-up of each, not counted
            run_stage(backend, spec, fresh_store(spec, root))
            plain: list[float] = []
            stage: list[float] = []
            tree = TreePeak()
            for round_ in range(1, args.rounds + 1):
                order = ("plain", "stage") if round_ % 2 else ("stage", "plain")
                line = []
                for side in order:
                    if side == "plain":
                        tokens, seconds = timed(run_plain, backend, inputs, params)
                        plain.append(tokens / seconds)
                    else:
                        storage = fresh_store(spec, root)
                        tokens, seconds = timed(run_stage, backend, spec, storage)
                        stage.append(tokens / seconds)
                    line.append(
                        f"{side} {tokens / seconds:6.1f} tok/s ({tokens} tokens, {seconds:.2f} s)"
                    )
                print(f"round {round_}: " + "; ".join(line), flush=True)
            # Memory in a run of its own: the sampling thread would slow a timed stage run.
            with tree.active():
                run_stage(backend, spec, fresh_store(spec, root))
        finally:
            backend.close()
        ratio = statistics.median(stage) / statistics.median(plain)
        print(
            f"\n{len(prompts)} prompts x {args.max_tokens} tokens, {args.rounds} rounds "
            f"(medians): plain vLLM {statistics.median(plain):.1f} tok/s, generate stage "
            f"{statistics.median(stage):.1f} tok/s, ratio {ratio:.3f} (goal >= 0.95)"
        )
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"peak RSS: this process (the stage's worker) {own:.0f} MiB; with vLLM's engine "
            f"process, during the stage {tree.peak / 2**20:.0f} MiB"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # vLLM starts its engine process with spawn
    main()
