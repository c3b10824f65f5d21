"""What the operator may take from a run's storage in one call (`storage_bounds`): objects read
whole, lines of streamed objects, streamed objects and listings stop at their limits with an
error naming the object and the setting; within them, reads are unchanged. Over a real S3
server (moto) too, where a listing stops paging at the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthpref.storage import LocalStorage, S3Storage, StorageLimitError, StorageLimits, s3_client
from synthpref.storage_bounds import BoundedStorage

LIMITS = StorageLimits(max_object_bytes=1024, max_stream_bytes=64 * 1024, max_listed_keys=5)


def bounded(tmp_path: Path) -> BoundedStorage:
    return BoundedStorage(LocalStorage(tmp_path), LIMITS)


def test_within_the_limits_reads_are_unchanged(tmp_path: Path) -> None:
    storage = bounded(tmp_path)
    storage.write_json("a.json", {"shards": 3})
    lines = "".join(f"line {i}\n" for i in range(2000)).encode()  # 20 KB of short lines
    storage.write_bytes("requests/r.jsonl", lines)
    assert storage.read_json("a.json") == {"shards": 3}
    assert b"".join(storage.read_chunks("requests/r.jsonl")) == lines
    assert sum(1 for _ in storage.read_lines("requests/r.jsonl")) == 2000
    assert storage.list("") == ["a.json", "requests/r.jsonl"]
    storage.commit("a.json", {"rows": 1})
    assert storage.committed("a.json") == {"rows": 1}


def test_an_object_read_whole_stops_at_max_object_bytes(tmp_path: Path) -> None:
    storage = bounded(tmp_path)
    storage.write_bytes("prompts/manifest.json", b"[" + b"1," * 4000 + b"1]")
    with pytest.raises(StorageLimitError, match=r"manifest\.json: the object is larger"):
        storage.read_json("prompts/manifest.json")
    storage.write_bytes("x.jsonl" + ".commit", b"{}" + b" " * 2000)  # a marker too
    with pytest.raises(StorageLimitError, match="maxStorageObjectBytes"):
        storage.committed("x.jsonl")


def test_a_streamed_object_stops_at_a_long_line_or_max_stream_bytes(tmp_path: Path) -> None:
    storage = bounded(tmp_path)
    storage.write_bytes("one-line.jsonl", b"x" * 5000)  # no newline: one endless line
    with pytest.raises(StorageLimitError, match="a line of the object"):
        list(storage.read_lines("one-line.jsonl"))
    storage.write_bytes("huge.jsonl", b"short line\n" * 10_000)  # 110 KB of short lines
    with pytest.raises(StorageLimitError, match="the object is larger than the 65536 bytes"):
        for _ in storage.read_chunks("huge.jsonl"):
            pass


def test_a_listing_stops_at_max_listed_keys(tmp_path: Path) -> None:
    storage = bounded(tmp_path)
    for i in range(6):
        storage.write_bytes(f"mix/shard-{i}.jsonl", b"")
    with pytest.raises(StorageLimitError, match="more than 5 objects"):
        storage.list("mix/")
    assert len(storage.list("mix/shard-1")) == 1


def test_an_s3_listing_stops_paging_at_the_limit(s3_endpoint: str, s3_uri: str) -> None:
    inner = S3Storage(s3_uri, s3_client(s3_endpoint, "us-east-1"))
    inner.LIST_PAGE_SIZE = 2
    for i in range(9):
        inner.write_bytes(f"k/{i}", b"")
    pages: list[int] = []
    original = inner.client.list_objects_v2

    def counted(**kwargs: object) -> object:
        pages.append(1)
        return original(**kwargs)  # type: ignore[arg-type]

    inner.client.list_objects_v2 = counted  # type: ignore[method-assign,assignment]
    with pytest.raises(StorageLimitError, match="more than 3 objects"):
        BoundedStorage(inner, StorageLimits(max_listed_keys=3)).list("k/")
    assert len(pages) == 2  # 4 keys seen: no third page fetched
