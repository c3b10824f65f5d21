"""Local storage and input errors through the real CLI: one `Error:` line naming the path and the
cause, exit code 1, no traceback, and nothing done before the storage was found writable;
non-UTF-8 prompt bytes are malformed lines (named by file, line and byte offset)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from synthpref.spec import MalformedPolicy
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage
from tests.builders import make_spec, manifest_dict, spec_dict

SYNTHPREF = Path(sys.executable).parent / "synthpref"  # the console script, as users run it
# Line 2 of this file holds an invalid byte: Latin-1 "é" (0xE9) where UTF-8 was expected.
PROMPT_BYTES = b'{"text": "one"}\n{"text": "caf\xe9"}\n{"text": "two"}\n'
BAD_OFFSET = PROMPT_BYTES.index(b"\xe9")


def cli_error(tmp_path: Path, prompts_uri: str, storage_uri: str) -> str:
    """Run `synthpref prepare` on a run with these URIs; returns its one Error line."""
    run_file = tmp_path / "run.yaml"
    document = manifest_dict(spec_dict(prompts_uri=prompts_uri, storage_uri=storage_uri))
    run_file.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [str(SYNTHPREF), "prepare", str(run_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0].removeprefix("Error: ")


def test_storage_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("not a folder\n")
    message = cli_error(tmp_path, str(tmp_path / "missing-prompts"), str(tmp_path / "store"))
    # The storage is checked before prepare looks for prompts (which do not exist either).
    assert message == f"storage path {tmp_path / 'store'} exists and is not a directory"

    run = tmp_path / "store" / "run"
    message = cli_error(tmp_path, str(tmp_path / "missing"), str(run))
    assert message == f"storage {run}: {tmp_path / 'store'} exists and is not a directory"


def test_storage_that_is_not_writable(tmp_path: Path) -> None:
    # /sys takes no new entries from anyone, root included (a chmod would not stop root).
    store = Path("/sys/synthpref-test-store")
    message = cli_error(tmp_path, str(tmp_path / "missing-prompts"), str(store))
    assert message.startswith(f"storage {store}: cannot write {store}/"), message
    assert message.endswith((": permission denied", ": read-only file system")), message
    assert not store.exists()


def test_non_utf8_prompt_fails_naming_file_line_and_byte_offset(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(PROMPT_BYTES)
    message = cli_error(tmp_path, str(prompts), str(tmp_path / "store"))
    assert message == (
        f"{prompts}:2: not valid UTF-8 at byte offset {BAD_OFFSET} (invalid continuation byte)"
    )
    assert not (tmp_path / "store" / "prompts" / "manifest.json").exists()


def test_non_utf8_prompt_is_skipped_and_reported_under_skip(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(PROMPT_BYTES)
    spec = make_spec(prompts={"uri": str(prompts), "onMalformed": MalformedPolicy.SKIP.value})

    summary = run_prepare(spec, LocalStorage(tmp_path / "store"))

    assert (summary.prompts, summary.malformed) == (2, 1)
    assert summary.malformed_examples == [
        f"{prompts}:2: not valid UTF-8 at byte offset {BAD_OFFSET} (invalid continuation byte)"
    ]
    manifest = json.loads((tmp_path / "store" / "prompts" / "manifest.json").read_text())
    assert manifest["malformed"] == 1
