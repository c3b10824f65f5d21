"""The Blocked condition: what outside the run keeps it from going on, for now; pure.

A run is blocked when the reconcile pass cannot do its work for a reason the run's author (or
an admin) must fix and that fixes itself once fixed: a disallowed or missing Secret (the
admission problems, `admission.py`), a Secret without the key the spec names, storage that
cannot be reached, worker pods that no node can take, or a Job the API server refuses to
create (a ResourceQuota, an admission policy). The run keeps its phase (`Pending`
for a new run), its message says `blocked: ...`, the `Blocked` condition carries the reason
(shown by `kubectl get prun -o wide`), and one Warning Event is emitted when the cause changes.
Every pass that gets through to the planner has it set `Blocked` again: True while a pod
of the run cannot be scheduled or Kueue has not admitted its Job (`planner._waiting`), else
False.

Called by `reconcile.Reconciler` (admission holds, failed observations).
"""

from __future__ import annotations

from synthpref.storage_errors import LeaseHeldError, StorageLimitError
from synthpref_operator.planner import Event, set_condition
from synthpref_operator.status import ConditionStatus, ConditionType, Reason, RunStatus

BLOCKED_PREFIX = "blocked: "


def blocked_status(
    previous: RunStatus,
    reason: Reason,
    message: str,
    generation: int,
    now: str,
    *,
    event: bool = True,
    prefix: str = BLOCKED_PREFIX,
    before: RunStatus | None = None,
) -> tuple[RunStatus, list[Event]]:
    """`previous` held where it is with `Blocked=True` and the message `prefix` + `message`,
    and a Warning Event (with `event`) when the run was not blocked before (in `before`, by
    default `previous`) or was blocked for something else."""
    text = prefix + message
    was = (before or previous).condition(ConditionType.BLOCKED)
    conditions = set_condition(
        previous.conditions,
        ConditionType.BLOCKED,
        ConditionStatus.TRUE,
        reason,
        text,
        generation,
        now,
    )
    events: list[Event] = []
    changed = was is None or was.status is not ConditionStatus.TRUE or was.message != text
    if event and changed:
        events.append(Event("Warning", reason.value, text))
    status = previous.model_copy(
        update={"message": text, "conditions": conditions, "observed_generation": generation}
    )
    return status, events


def observation_reason(error: Exception) -> Reason:
    """The Blocked reason of an error the pass met while observing the run."""
    if isinstance(error, StorageLimitError):
        return Reason.STORAGE_OBJECT_TOO_LARGE
    if isinstance(error, LeaseHeldError):  # another writer, e.g. `synthpref annotate run`
        return Reason.RUN_LEASE_HELD
    return (
        Reason.SECRET_KEY_MISSING if isinstance(error, LookupError) else Reason.STORAGE_UNREACHABLE
    )
