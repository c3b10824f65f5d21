"""Stable seeds derived from a base seed and ids, the same on every machine and Python run.

Python's `hash()` is salted per process, so it must never seed anything reproducible.
"""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' string forms (e.g. a base seed and a prompt id)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1
