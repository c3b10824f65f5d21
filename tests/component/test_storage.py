"""Storage against a local directory and a real S3 server: atomic writes, commits, listing."""

from __future__ import annotations

import pytest

from synthpref import jsonl
from synthpref.jsonl import RowError, read_records, read_rows, write_records, write_rows
from synthpref.records import PromptRecord
from synthpref.rows import PromptRow
from synthpref.storage import NotUtf8Error, S3Storage, Storage, StorageError


def test_write_read_roundtrip_streams_lines(storage: Storage) -> None:
    with storage.open_writer("a/b.jsonl") as stream:
        stream.write("first\nsecond line\n")
    assert list(storage.read_lines("a/b.jsonl")) == ["first", "second line"]
    assert storage.read_bytes("a/b.jsonl") == b"first\nsecond line\n"
    assert storage.exists("a/b.jsonl")
    assert not storage.exists("a/missing.jsonl")


def test_failed_write_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.open_writer("half.jsonl") as stream:
        stream.write("partial\n")
        raise RuntimeError("crash mid-write")
    assert not storage.exists("half.jsonl")
    assert storage.list() == []


def test_commit_marker_decides_done(storage: Storage) -> None:
    rows = [PromptRow(id=f"p{i}", text=f"t{i}", source=f"f:{i}") for i in range(3)]
    storage.write_bytes("shard.jsonl", b'{"half": ')  # data without a marker is not done
    assert storage.committed("shard.jsonl") is None
    assert write_rows(storage, "shard.jsonl", rows, {"extra": 1}) == 3
    assert storage.committed("shard.jsonl") == {"rows": 3, "extra": 1}
    assert [r.id for r in read_rows(storage, "shard.jsonl", PromptRow)] == ["p0", "p1", "p2"]
    storage.uncommit("shard.jsonl")
    assert storage.committed("shard.jsonl") is None


def test_bad_row_names_object_and_line(storage: Storage) -> None:
    storage.write_bytes("rows.jsonl", b'{"id":"a","text":"x","source":"s"}\n{"id": 3}\n')
    storage.commit("rows.jsonl", {"rows": 2})
    with pytest.raises(RowError, match=r"rows\.jsonl:2: not a valid PromptRow"):
        list(read_rows(storage, "rows.jsonl", PromptRow))


def test_records_round_trip_and_bad_line_names_object_and_line(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mix and parse stages' msgspec path (jsonl.write_records / read_records).
    monkeypatch.setattr(jsonl, "WRITE_BATCH_BYTES", 64)  # several writes to the S3 spool
    records = [PromptRecord(id=f"p{i}", text=f"t{i} é\n", source=f"f:{i}") for i in range(9)]
    assert write_records(storage, "fast.jsonl", records, {"extra": 2}) == 9
    assert storage.committed("fast.jsonl") == {"rows": 9, "extra": 2}
    assert list(read_records(storage, "fast.jsonl", PromptRecord)) == records
    assert [r.text for r in read_rows(storage, "fast.jsonl", PromptRow)] == [
        r.text for r in records
    ]
    storage.write_bytes("bad.jsonl", b'{"id":"a","text":"x","source":"s"}\n{"id": 3}\n')
    storage.commit("bad.jsonl", {"rows": 2})
    with pytest.raises(RowError, match=r"bad\.jsonl:2: not a valid PromptRow: Expected `str`"):
        list(read_records(storage, "bad.jsonl", PromptRecord))


def test_list_by_prefix_sorted(storage: Storage) -> None:
    for key in ["gen/m2/s1", "gen/m1/s2", "gen/m1/s1", "prompts/s0"]:
        storage.write_bytes(key, b"x")
    assert storage.list("gen/m1/") == ["gen/m1/s1", "gen/m1/s2"]
    assert storage.list("gen/") == ["gen/m1/s1", "gen/m1/s2", "gen/m2/s1"]
    assert storage.list("nothing/") == []
    # A prefix is a key prefix, not only a folder: it may end inside a file or folder name.
    assert storage.list("gen/m1/s") == ["gen/m1/s1", "gen/m1/s2"]
    assert storage.list("gen/m1/s2") == ["gen/m1/s2"]
    assert storage.list("gen/m") == ["gen/m1/s1", "gen/m1/s2", "gen/m2/s1"]
    assert storage.list("pro") == ["prompts/s0"]
    assert storage.list("gen/m3") == []


def test_missing_object_error_names_uri(storage: Storage) -> None:
    with pytest.raises(StorageError, match=r"nope\.jsonl: not found"):
        storage.read_bytes("nope.jsonl")


def test_s3_listing_follows_pagination(s3_uri: str, s3_endpoint: str) -> None:
    from synthpref.storage import s3_client

    storage = S3Storage(s3_uri, s3_client(s3_endpoint, "us-east-1"))
    storage.LIST_PAGE_SIZE = 2
    keys = [f"k/{i:02d}" for i in range(5)]
    for key in keys:
        storage.write_bytes(key, b"x")
    assert storage.list("k/") == keys


def test_s3_large_object_uses_multipart(s3_uri: str, s3_endpoint: str) -> None:
    from synthpref.storage import s3_client

    storage = S3Storage(s3_uri, s3_client(s3_endpoint, "us-east-1"))
    line = "x" * 1023 + "\n"
    with storage.open_writer("big.jsonl") as stream:
        for _ in range(10 * 1024):  # 10 MiB: above boto3's 8 MiB multipart threshold
            stream.write(line)
    head = storage.client.head_object(Bucket=storage.bucket, Key=storage._key("big.jsonl"))
    assert head["ContentLength"] == 10 * 1024 * 1024
    assert "-" in head["ETag"]  # multipart ETags end in -<parts>
    assert sum(1 for _ in storage.read_lines("big.jsonl")) == 10 * 1024


def test_line_endings_and_non_utf8_lines_read_alike(storage: Storage) -> None:
    storage.write_bytes("mixed.jsonl", b"a\r\nb\rc\n\nd")
    assert list(storage.read_lines("mixed.jsonl")) == ["a", "b", "c", "", "d"]
    storage.write_bytes("bad.jsonl", b"fine\n\xc3\xa9 ok\nnot \xff utf-8\n")
    lines = storage.read_lines("bad.jsonl")
    assert [next(lines), next(lines)] == ["fine", "é ok"]
    with pytest.raises(NotUtf8Error) as caught:
        next(lines)
    assert str(caught.value) == (
        f"{storage.url('bad.jsonl')}:3: not valid UTF-8 at byte offset 15 (invalid start byte)"
    )


def test_check_writable_leaves_nothing(storage: Storage) -> None:
    storage.check_writable()
    assert storage.list() == []
