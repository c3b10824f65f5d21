"""Tiny offline chat models for the quickstart and the vLLM tests: no network, a few MB each.

`synthpref dev tiny-models OUT_DIR --names a,b,c` (mounted by devtools) and the vLLM test fixtures
call `build_tiny_models`. Each model directory is a complete Hugging Face Llama checkpoint that
vLLM loads through its normal weight loader:

- a byte-level BPE tokenizer trained here on a small generated English corpus (tokenizer.json,
  tokenizer_config.json with a Jinja chat template and bos/eos/pad tokens);
- config.json of a tiny Llama (hidden 128, 2 heads of size 64 — a head size vLLM's CPU attention
  supports — 2 layers);
- model.safetensors with random weights drawn from the model's seed, so every "model" answers
  differently.

Same seed → byte-identical files. A finished model has a `.tiny-model` stamp; building into a
directory that already has a matching stamp does nothing, and a half-built one is redone.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from synthpref.seeding import stable_seed

# Bump when the files a build writes change, so stale models are rebuilt.
FORMAT_VERSION = 2
STAMP = ".tiny-model"
_CORPUS_SEED = 1  # fixed: the tokenizer must not change with FORMAT_VERSION alone

HIDDEN = 128
HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 64
LAYERS = 2
INTERMEDIATE = 256
MAX_POSITIONS = 4096  # room for judge requests (rubric + k answers) in the quickstart
VOCAB_TARGET = 1024

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_SEED_TEXT = """\
The quick brown fox jumps over the lazy dog. A preference dataset pairs a prompt with a chosen
answer and a rejected answer. Judges rate every answer from 1 to 5 for helpfulness, honesty,
instruction following and truthfulness. Write a short poem about the sea. Explain how a rainbow
forms. What is the capital of France? Paris is the capital of France. List three prime numbers:
2, 3 and 5. Summarize the following text in one sentence. Translate "good morning" into Spanish.
{"rating": 4, "rationale": "The answer is correct and clear."} Thank you! Could you help me plan
a trip? Sure, here is a plan for three days. Step 1: pack. Step 2: travel. Step 3: rest.
"""

_SUBJECTS = (
    "the model",
    "a careful judge",
    "the student",
    "my friend",
    "the answer",
    "this recipe",
    "the teacher",
    "a small robot",
    "the dataset",
    "our team",
    "the river",
    "every prompt",
)
_VERBS = (
    "explains",
    "writes",
    "describes",
    "rates",
    "compares",
    "answers",
    "improves",
    "summarizes",
    "lists",
    "translates",
    "checks",
    "builds",
)
_OBJECTS = (
    "the question",
    "a simple story",
    "three ideas",
    "the main point",
    "a clear plan",
    "the weather today",
    "a short poem",
    "the history of science",
    "the best option",
    "two examples",
    "the final result",
    "a helpful reply",
)
_ENDINGS = (".", "!", "?", " today.", " very well.", " in 5 steps.", " with care.", " again.")


def training_corpus(lines: int = 400) -> list[str]:
    """A few KB of English-like text: fixed seed text plus deterministic generated sentences."""
    rng = random.Random(_CORPUS_SEED)
    corpus = _SEED_TEXT.splitlines()
    for _ in range(lines):
        sentence = (
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} "
            f"{rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}"
        )
        if rng.random() < 0.2:
            sentence += f" Score: {rng.randint(1, 5)} of 5."
        corpus.append(sentence)
    return corpus


def train_tokenizer() -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` (every byte is encodable: JSON output works)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    return tokenizer


def _tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }


def _model_config(vocab_size: int, token_ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "head_dim": HEAD_DIM,
        "num_hidden_layers": LAYERS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": token_ids[BOS],
        "eos_token_id": token_ids[EOS],
        "pad_token_id": token_ids[PAD],
        "torch_dtype": "float32",
    }


def _weight_shapes(vocab_size: int) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, init std; 0 means ones) in a fixed order: the order the RNG draws them."""
    shapes: list[tuple[str, tuple[int, ...], float]] = [
        ("model.embed_tokens.weight", (vocab_size, HIDDEN), 1.0)
    ]
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        shapes.append((f"{prefix}.input_layernorm.weight", (HIDDEN,), 0.0))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.append((f"{prefix}.self_attn.{proj}.weight", (HIDDEN, HIDDEN), 0.08))
        shapes.append((f"{prefix}.post_attention_layernorm.weight", (HIDDEN,), 0.0))
        shapes.append((f"{prefix}.mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN), 0.08))
        shapes.append((f"{prefix}.mlp.up_proj.weight", (INTERMEDIATE, HIDDEN), 0.08))
        shapes.append((f"{prefix}.mlp.down_proj.weight", (HIDDEN, INTERMEDIATE), 0.06))
    shapes.append(("model.norm.weight", (HIDDEN,), 0.0))
    # A wide lm_head makes next-token distributions peaked, so seeds give clearly distinct texts.
    shapes.append(("lm_head.weight", (vocab_size, HIDDEN), 0.25))
    return shapes


def _write_weights(path: Path, vocab_size: int, seed: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    for name, shape, std in _weight_shapes(vocab_size):
        if std == 0.0:
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _stamp_text(seed: int) -> str:
    return json.dumps({"format": FORMAT_VERSION, "seed": seed}, sort_keys=True) + "\n"


def is_built(out_dir: Path, seed: int) -> bool:
    """True when `out_dir` holds a finished model of this seed and format version."""
    stamp = out_dir / STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8") == _stamp_text(seed)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(out_dir: str | os.PathLike[str], seed: int, tokenizer: Any = None) -> Path:
    """Write a tiny Llama chat model to `out_dir` (skipped when already built); return its path.

    The files are written to a temporary sibling directory and renamed into place, so a crash
    never leaves a directory that looks finished. `tokenizer` lets a caller building several
    models train the (seed-independent) tokenizer once.
    """
    target = Path(out_dir)
    if is_built(target, seed):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer()
    token_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    vocab_size = int(tokenizer.get_vocab_size())

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer.save(str(staging / "tokenizer.json"))
        _write_json(staging / "tokenizer_config.json", _tokenizer_config())
        _write_json(
            staging / "special_tokens_map.json",
            {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD},
        )
        _write_json(staging / "config.json", _model_config(vocab_size, token_ids))
        _write_weights(staging / "model.safetensors", vocab_size, seed)
        (staging / STAMP).write_text(_stamp_text(seed), encoding="utf-8")
        publish_model(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def model_seed(name: str, base_seed: int = 0) -> int:
    """The weight seed of the tiny model called `name` (stable across machines)."""
    return stable_seed("tiny-model", base_seed, name) % (2**32)


def build_tiny_models(
    out_root: str | os.PathLike[str], names: Iterable[str], base_seed: int = 0
) -> dict[str, Path]:
    """Build one tiny model per name under `out_root/<name>`, each seeded from its name."""
    root = Path(out_root)
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"tiny model name {name!r}: must be a plain directory name")
    missing = [n for n in wanted if not is_built(root / n, model_seed(n, base_seed))]
    tokenizer = train_tokenizer() if missing else None
    return {
        name: build_tiny_model(root / name, model_seed(name, base_seed), tokenizer=tokenizer)
        for name in wanted
    }


def _split_names(_ctx: click.Context, _param: click.Parameter, value: str) -> Sequence[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give at least one name, e.g. --names tiny-a,tiny-b")
    return names


@click.command("tiny-models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--names",
    default="tiny-a,tiny-b,tiny-c,tiny-d",
    show_default=True,
    callback=_split_names,
    help="Comma-separated model names; each becomes OUT_DIR/<name>, seeded from its name.",
)
@click.option("--seed", "base_seed", default=0, show_default=True, help="Base seed.")
def tiny_models_command(out_dir: Path, names: Sequence[str], base_seed: int) -> None:
    """Build tiny offline Llama chat models (random weights, local tokenizer) in OUT_DIR."""
    for name, path in build_tiny_models(out_dir, names, base_seed).items():
        click.echo(f"{name}\t{path}")


def publish_model(staging: Path, target: Path) -> None:
    """Move a model built in `staging` (a mkdtemp directory beside `target`) to `target`,
    replacing a half-built or outdated one, readable by other users (pods)."""
    staging.chmod(0o755)  # mkdtemp makes a private directory
    for file in staging.iterdir():
        file.chmod(0o644)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
