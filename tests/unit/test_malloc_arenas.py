"""`malloc_arenas.limit_malloc_arenas`: with it, threads that allocate share two glibc arenas;
without it, each takes one of its own (what made the operator's peak RSS grow with its
threads). Counted in a fresh interpreter with glibc's own `malloc_info` report."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, tempfile, threading
    from synthpref_operator.malloc_arenas import limit_malloc_arenas
    capped = limit_malloc_arenas() if sys.argv[1] == "cap" else None
    kept = []
    together = threading.Barrier(8)
    def allocate():  # all alive at once: an exited thread's arena is free for the next one
        together.wait()
        kept.append([bytes(4096) for _ in range(200)])  # above pymalloc's sizes: glibc malloc
        together.wait()
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(capped, open(report.name).read().count("<heap nr="))
    """
)


def arenas_after_threads(cap: bool) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "cap" if cap else "no"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    capped, count = done.stdout.split()
    return capped, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_threads_share_two_arenas_once_capped() -> None:
    assert arenas_after_threads(cap=False)[1] > 2  # the default: an arena per thread
    assert arenas_after_threads(cap=True) == ("True", 2)


def test_the_environment_decides_when_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthpref_operator.malloc_arenas import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
