"""`synthpref run --local` checks its local vLLM model paths first and says how to make them,
instead of a vLLM traceback about repo ids minutes later."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthpref.local_run import LocalModelMissingError, check_local_models
from synthpref.spec import PreferenceRunSpec
from tests.builders import spec_dict


def spec(*paths: str, judge: str = "org/judge") -> PreferenceRunSpec:
    document = spec_dict(
        models=len(paths),
        judge={"backend": "vllm", "model": judge},
        mix={"responsesPerPrompt": 2},
    )
    for model, path in zip(document["models"], paths, strict=True):
        model["path"] = path
    return PreferenceRunSpec.model_validate(document)


def test_missing_local_paths_are_named_with_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".models" / "there").mkdir(parents=True)
    checked = spec(".models/there", ".models/tiny-a", "HuggingFaceTB/SmolLM2-135M", judge="./j")
    with pytest.raises(LocalModelMissingError) as raised:
        check_local_models(checked)
    message = str(raised.value)
    assert "models[1] m1: .models/tiny-a; judge: ./j" in message
    assert "there" not in message and "SmolLM2" not in message  # exists / a repo id
    assert "synthpref dev models .models --tiny tiny-bad" in message


def test_nothing_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    check_local_models(spec("./m", "org/model", judge=str(tmp_path / "m")))
