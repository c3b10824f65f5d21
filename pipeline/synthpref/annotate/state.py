"""The judge's state document: every request file's ledger in one object, read in one GET.

Written by the annotate engine (`Annotator`) at the end of each step that changed a ledger or
saw batches progress (request counts live here between a file's ledger writes), and
read when an Annotator first needs its ledgers: the operator builds one per reconcile pass (for
its observer and for its step), so a run's judge state costs one read per pass instead of
several per request file. Key: `layout.JUDGE_STATE`.

The ledgers (`annotate.ledger`) stay the source of truth; this document is derived from them.
It is trusted only when `clean`: a step that is about to save a ledger first rewrites it with
`clean` false, and writes it clean again when the step ends, so a process that died in between
leaves a document that says so, and the next reader loads the ledgers themselves (and the next
step writes the document again). A missing document is rebuilt the same way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthpref.annotate.ledger import FileLedger
from synthpref.layout import JUDGE_STATE
from synthpref.storage import Storage

VERSION = 1


class JudgeState(BaseModel):
    """The ledgers of every request file of the run's shards, as of the last step."""

    model_config = ConfigDict(extra="forbid")

    version: int = VERSION
    clean: bool  # false while a step may be saving ledgers that this does not show yet
    shards: list[int]
    ledgers: list[FileLedger] = Field(default_factory=list)


def load(storage: Storage) -> JudgeState | None:
    """The document, or None when it is missing or of another version (then the ledgers are
    read instead)."""
    if not storage.exists(JUDGE_STATE):
        return None
    try:
        state = JudgeState.model_validate(storage.read_json(JUDGE_STATE))
    except ValidationError:
        return None
    return state if state.version == VERSION else None


def save(storage: Storage, state: JudgeState) -> None:
    storage.write_json(JUDGE_STATE, state.model_dump(mode="json"))
