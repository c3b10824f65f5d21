"""Cap glibc's malloc arenas for the operator process, before its threads start.

glibc gives threads that allocate at the same moment arenas of their own, up to eight per core,
and an arena's freed memory mostly stays with it. The operator runs a pass per run and its Job
creations on many threads (`--workers`, `--job-creations`), so its peak RSS grew with the arenas,
not with its data: in `scripts/bench_operator.py --scenario concurrent` (50 runs, 2 cores) peak
RSS was 296 and 302 MiB with glibc's default, 242 and 226 MiB with MALLOC_ARENA_MAX=2 (runs
alternated, same CPU seconds), 273 and 267 MiB in two later runs with this cap (the figure is
noisy). `MALLOC_ARENA_MAX` in the environment, when set, is left to decide.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameter number for the arena cap (glibc's malloc.h).
M_ARENA_MAX = -8
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas (True when glibc took it; False without glibc, or when the environment's
    MALLOC_ARENA_MAX decides)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
