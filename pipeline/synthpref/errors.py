"""The errors a user can meet and act on, as opposed to bugs.

Every expected failure of a stage (bad input, a stage run before its inputs exist, storage or an
endpoint that stays unavailable, a missing API key) raises a subclass of `SynthprefError` whose
message names what failed (file and line, model and endpoint, storage URI) and, where there is
one, what to do. `synthpref.cli.entrypoint` turns them into one `Error: ...` line and a non-zero
exit code; `--debug` (or SYNTHPREF_DEBUG=1) shows the traceback. Pure: no I/O.
"""

from __future__ import annotations

# Where a worker writes its `Error: ...` line when it fails, as the container's termination
# message: the operator sets it to the pod's terminationMessagePath; default, the kubelet's.
TERMINATION_LOG_ENV = "SYNTHPREF_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# A kubelet keeps at most this much of a termination message.
TERMINATION_MESSAGE_BYTES = 4096


class SynthprefError(Exception):
    """Base of every user-facing error; `str(error)` is the whole message."""

    exit_code = 1


class InputsNotReadyError(SynthprefError, RuntimeError):
    """A stage was asked to run before the stage it reads from committed its output."""


class ShardFailedError(SynthprefError, RuntimeError):
    """A shard could not be done for a reason outside its rows (an endpoint outage, an error
    budget exceeded); nothing of it was committed and a rerun (or the Job's retry) redoes it."""
