"""What each stage needs committed before it starts: checked up front, named when missing.

Called by every stage before it does any work (and by the OpenAI judge's engine), so a stage
started too early stops with one message that names what is missing and which stage to run,
and commits nothing a later run would trust. A shard counts only when its commit marker exists
(`Storage.commit`); a folder is listed once per check, not probed key by key.

- prompt shards: `prompts/manifest.json` and every `prompts/shard-N.jsonl.commit`;
- generations: every model's shard;
- mix: the shard's MixRow file, whose commit info lists its request files (each committed);
- the judge: per request file, its ledger in a final phase (the OpenAI judge), or, with no
  ledger, its first result file committed (the vLLM judge, or any judge writing the same files).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from synthpref import layout
from synthpref.annotate.ledger import TERMINAL_PHASES, load
from synthpref.errors import InputsNotReadyError
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import COMMIT_SUFFIX, Storage

# How many missing items a message names before it says "and N more".
SHOWN = 8


def describe(items: Sequence[str]) -> str:
    """`a, b, c` or `a, b, ... and 12 more`."""
    shown = ", ".join(items[:SHOWN])
    return f"{shown} and {len(items) - SHOWN} more" if len(items) > SHOWN else shown


def uncommitted(storage: Storage, keys: Iterable[str], folder: str) -> list[str]:
    """The keys (all under `folder`) that have no commit marker, from one listing."""
    markers = {k for k in storage.list(folder) if k.endswith(COMMIT_SUFFIX)}
    return [k for k in keys if k + COMMIT_SUFFIX not in markers]


def prompt_shards(storage: Storage) -> int:
    """The number of prompt shards, once prepare committed its manifest and every shard."""
    if not storage.exists(layout.PROMPTS_MANIFEST):
        raise InputsNotReadyError(
            f"{storage.url(layout.PROMPTS_MANIFEST)}: not found; run the prepare stage first"
        )
    shards = int(storage.read_json(layout.PROMPTS_MANIFEST)["shards"])
    missing = missing_prompt_shards(storage, shards)
    if missing:
        raise InputsNotReadyError(
            f"{storage.url('prompts/')}: prompt shard(s) {describe([str(s) for s in missing])} "
            f"of {shards} have no commit marker; run the prepare stage again (it redoes them)"
        )
    return shards


def missing_prompt_shards(storage: Storage, shards: int) -> list[int]:
    keys = [layout.prompt_shard(s) for s in range(shards)]
    absent = set(uncommitted(storage, keys, "prompts/"))
    return [s for s, key in enumerate(keys) if key in absent]


def require_generations(spec: PreferenceRunSpec, storage: Storage, shards: Iterable[int]) -> None:
    """Every model's generation shard of `shards` is committed, or one error naming them all."""
    wanted = list(shards)
    gaps: list[str] = []
    for model in spec.models:
        keys = [layout.generation_shard(model.name, s) for s in wanted]
        absent = set(uncommitted(storage, keys, f"generations/{model.name}/"))
        missing = [str(s) for s, key in zip(wanted, keys, strict=True) if key in absent]
        if missing:
            gaps.append(f"model {model.name} shard(s) {describe(missing)}")
    if gaps:
        raise InputsNotReadyError(
            f"{storage.url('generations/')}: not committed: {'; '.join(gaps)}; "
            "run generate for those models first"
        )


def require_mix(storage: Storage, shards: Iterable[int]) -> None:
    """Every mix shard of `shards` is committed, or one error naming them."""
    wanted = list(shards)
    keys = [layout.mix_shard(s) for s in wanted]
    absent = set(uncommitted(storage, keys, "mix/"))
    missing = [str(s) for s, key in zip(wanted, keys, strict=True) if key in absent]
    if missing:
        raise InputsNotReadyError(
            f"{storage.url('mix/')}: mix shard(s) {describe(missing)} not committed; "
            "run the mix stage first"
        )


def request_files(storage: Storage, shard: int) -> list[str]:
    """The judge request files of a committed mix shard (as its commit info lists them)."""
    info = storage.committed(layout.mix_shard(shard))
    if info is None:
        raise InputsNotReadyError(
            f"{storage.url(layout.mix_shard(shard))}: mix not committed; run the mix stage first"
        )
    keys = [str(item["key"]) for item in info.get("request_files", [])]
    missing = uncommitted(storage, keys, layout.request_prefix(shard))
    if missing:
        raise InputsNotReadyError(
            f"{storage.url(layout.mix_shard(shard))}: its request file(s) "
            f"{describe(missing)} are not committed; run the mix stage again for shard {shard}"
        )
    return keys


def judge_unfinished(storage: Storage, shard: int) -> list[str]:
    """Why the judge has not finished shard `shard`: one entry per unfinished request file."""
    pending: list[str] = []
    for key in request_files(storage, shard):
        ledger = load(storage, key)
        if ledger is not None:
            if ledger.phase not in TERMINAL_PHASES:
                pending.append(f"{key} (judge ledger: {ledger.phase.value})")
        elif storage.committed(layout.result_for_request(key)) is None:
            pending.append(f"{key} (no result)")
    return pending


def require_judged(storage: Storage, shards: Iterable[int]) -> None:
    """The judge finished every request file of `shards`, or one error naming what waits."""
    pending = [item for shard in shards for item in judge_unfinished(storage, shard)]
    if pending:
        raise InputsNotReadyError(
            f"{storage.url('requests/')}: the judge has not finished {describe(pending)}; "
            "run the judge to the end first (synthpref judge, or synthpref annotate run)"
        )
