"""Tiny offline models: deterministic files, per-seed weights, skip-when-built (no vLLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from synthpref import tinymodels
from synthpref.tinymodels import (
    STAMP,
    build_tiny_model,
    build_tiny_models,
    model_seed,
    tiny_models_command,
)


def _files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "one", seed=7)
    second = build_tiny_model(tmp_path / "two", seed=7)
    assert _files(first) == _files(second)
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(
        _files(first)
    )


def test_different_seeds_give_different_weights_and_the_same_tokenizer(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", seed=1)
    b = build_tiny_model(tmp_path / "b", seed=2)
    weights_a = load_file(str(a / "model.safetensors"))
    weights_b = load_file(str(b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert not np.array_equal(weights_a["lm_head.weight"], weights_b["lm_head.weight"])
    assert not np.array_equal(
        weights_a["model.layers.0.self_attn.q_proj.weight"],
        weights_b["model.layers.0.self_attn.q_proj.weight"],
    )
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_config_matches_tokenizer_and_weights(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m", seed=3)
    config = json.loads((model / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    weights = load_file(str(model / "model.safetensors"))

    assert config["vocab_size"] == tokenizer.get_vocab_size()
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"], 128)
    assert weights["lm_head.weight"].shape == (config["vocab_size"], 128)
    for token in ("bos", "eos", "pad"):
        token_text = json.loads((model / "tokenizer_config.json").read_text())[f"{token}_token"]
        assert tokenizer.token_to_id(token_text) == config[f"{token}_token_id"]
    size = sum(p.stat().st_size for p in model.iterdir())
    assert size < 8 * 1024 * 1024, f"tiny model is {size} bytes"


def test_byte_level_tokenizer_round_trips_any_text(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m", seed=3)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    text = 'Ünïcödé, JSON {"rating": 5} and emoji 🙂 — all encodable.'
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_chat_template_renders_roles_and_generation_prompt() -> None:
    template = jinja2.Environment().from_string(tinymodels.CHAT_TEMPLATE)
    text = template.render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        bos_token=tinymodels.BOS,
        eos_token=tinymodels.EOS,
        add_generation_prompt=True,
    )
    assert text == "<|bos|><|system|>\nBe brief.<|eos|>\n<|user|>\nHi<|eos|>\n<|assistant|>\n"


def test_built_model_is_skipped_and_half_built_one_is_redone(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m", seed=5)
    weights = model / "model.safetensors"
    weights.write_bytes(b"marker: must survive a rebuild of a finished model")
    assert build_tiny_model(tmp_path / "m", seed=5) == model
    assert weights.read_bytes().startswith(b"marker")

    (model / STAMP).unlink()  # as if the build had crashed before finishing
    build_tiny_model(tmp_path / "m", seed=5)
    assert not weights.read_bytes().startswith(b"marker")
    assert (model / STAMP).is_file()


def test_other_seed_in_same_directory_is_rebuilt(tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "m", seed=5)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    build_tiny_model(tmp_path / "m", seed=6)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() != before


def test_build_tiny_models_seeds_each_name(tmp_path: Path) -> None:
    paths = build_tiny_models(tmp_path, ["alpha", "beta"])
    assert paths == {"alpha": tmp_path / "alpha", "beta": tmp_path / "beta"}
    assert model_seed("alpha") != model_seed("beta")
    alone = build_tiny_model(tmp_path / "again", seed=model_seed("alpha"))
    assert _files(alone) == _files(paths["alpha"])
    assert _files(paths["alpha"])["model.safetensors"] != _files(paths["beta"])["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging dir left"


@pytest.mark.parametrize("bad", ["", "a/b", ".hidden"])
def test_bad_names_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="plain directory name"):
        build_tiny_models(tmp_path, [bad])


def test_cli_builds_the_named_models(tmp_path: Path) -> None:
    result = CliRunner().invoke(tiny_models_command, [str(tmp_path), "--names", "x, y"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"x\t{tmp_path / 'x'}", f"y\t{tmp_path / 'y'}"]
    assert (tmp_path / "x" / STAMP).is_file() and (tmp_path / "y" / STAMP).is_file()


def test_cli_rejects_empty_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(tiny_models_command, [str(tmp_path), "--names", " , "])
    assert result.exit_code != 0
    assert "at least one name" in result.output
