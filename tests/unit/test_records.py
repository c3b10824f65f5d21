"""Unit tests of synthpref.records and the fast JSON-lines codec (jsonl.read_records /
write_records) and request encoder: the same fields, bytes and errors as the pydantic path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import BaseModel

from synthpref import jsonl, records, rows
from synthpref.jsonl import RowError, read_records, read_rows, write_records, write_rows
from synthpref.judge_requests import RequestEncoder, build_request, encode_line
from synthpref.spec import DEFAULT_ASPECTS, JudgeSpec
from synthpref.storage import LocalStorage, NotUtf8Error, Storage

TWINS: list[tuple[Any, type[BaseModel]]] = [
    (records.PromptRecord, rows.PromptRow),
    (records.GenerationRecord, rows.GenerationRow),
    (records.CandidateRecord, rows.Candidate),
    (records.MixRecord, rows.MixRow),
    (records.MessageRecord, rows.ChatMessage),
    (records.PreferenceRecord, rows.PreferenceRow),
    (records.ResultResponse, rows.BatchResponse),
    (records.ResultError, rows.BatchError),
    (records.ResultRecord, rows.BatchResultLine),
]

# Strings JSON escapes, or that a naive encoder gets wrong.
TRICKY = 'é ü 中文 😀 "quoted" \\ back\nnew\r\tline \x00 \x01 \x1f \x7f \u2028 \u2029 </x> & <'


@pytest.mark.parametrize(("twin", "model"), TWINS)
def test_twin_has_the_models_fields_order_and_defaults(twin: Any, model: type[BaseModel]) -> None:
    assert twin.schema == model.__name__
    mine = {f.name: f for f in msgspec.structs.fields(twin)}
    assert list(mine) == list(model.model_fields)
    for name, field in model.model_fields.items():
        if field.is_required():
            assert mine[name].required, name
        else:
            default = field.get_default(call_default_factory=True)
            ours = mine[name].default_factory() if callable(mine[name].default_factory) else None
            assert (mine[name].default if ours is None else ours) == default, name


def sample_rows() -> list[tuple[type[msgspec.Struct], type[BaseModel], dict[str, Any]]]:
    candidates = [{"model": f"m{i}", "text": f"{TRICKY} {i}"} for i in range(3)]
    message = [{"role": "user", "content": TRICKY}, {"role": "assistant", "content": "ok"}]
    return [
        (records.PromptRecord, rows.PromptRow, {"id": "a", "text": TRICKY, "source": "f:1"}),
        (
            records.PromptRecord,
            rows.PromptRow,
            {"id": "b", "text": "t", "metadata": {"k": [1, 2.5, None, TRICKY]}, "source": "s"},
        ),
        (records.GenerationRecord, rows.GenerationRow, {"prompt_id": "a", "model": "m"}),
        (
            records.GenerationRecord,
            rows.GenerationRow,
            {"prompt_id": "a", "model": "m", "text": TRICKY, "completion_tokens": 7},
        ),
        (
            records.MixRecord,
            rows.MixRow,
            {
                "prompt_id": "p:1",
                "prompt": TRICKY,
                "metadata": {"lang": "de", "n": 3},
                "candidates": candidates,
                "order": {"honesty": [2, 0, 1], "helpfulness": [0, 1, 2]},
            },
        ),
        (
            records.PreferenceRecord,
            rows.PreferenceRow,
            {
                "prompt_id": "p",
                "prompt": TRICKY,
                "chosen": message,
                "rejected": message,
                "chosen_rating": 4.333333333333333,
                "rejected_rating": 1.0,
                "chosen_model": "a",
                "rejected_model": "b",
                "chosen_aspect_ratings": {"honesty": 5.0, "helpfulness": 3.5},
                "rejected_aspect_ratings": {},
            },
        ),
    ]


def test_written_records_are_the_bytes_of_the_models(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for index, (twin, model, fields) in enumerate(sample_rows()):
        fast, slow = f"fast-{index}.jsonl", f"slow-{index}.jsonl"
        record = msgspec.convert(fields, twin)
        assert write_records(storage, fast, [record, record], {"x": 1}) == 2
        write_rows(storage, slow, [model.model_validate(fields)] * 2, {"x": 1})
        assert storage.read_bytes(fast) == storage.read_bytes(slow)
        assert storage.committed(fast) == storage.committed(slow)
        back = list(read_records(storage, slow, twin))
        assert back == [record, record]
        assert [r.model_dump() for r in read_rows(storage, fast, model)] == [
            msgspec.to_builtins(record)
        ] * 2


def test_result_lines_read_as_the_model_reads_them(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    lines = [
        b'{"id":"r","custom_id":"c1","response":{"status_code":200,"body":{"x":"\\u00e9"},'
        b'"extra":1},"error":null,"other":true}',
        b'{"custom_id":"c2","error":{"code":"rate","message":"slow down","param":null}}',
        b"",
        b'   {"custom_id": "c3"}  ',
    ]
    storage.write_bytes("r.jsonl", b"\n".join(lines) + b"\n")
    storage.commit("r.jsonl", {})
    fast = list(read_records(storage, "r.jsonl", records.ResultRecord))
    slow = list(read_rows(storage, "r.jsonl", rows.BatchResultLine))
    assert [r.custom_id for r in fast] == ["c1", "c2", "c3"]
    for mine, theirs in zip(fast, slow, strict=True):
        assert mine.id == theirs.id
        assert (mine.response is None) is (theirs.response is None)
        if mine.response is not None and theirs.response is not None:
            assert (mine.response.status_code, mine.response.body) == (
                theirs.response.status_code,
                theirs.response.body,
            )
        assert (mine.error and mine.error.code) == (theirs.error and theirs.error.code)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"prompt_id": "a"}', "missing required field `model`"),
        (b'{"prompt_id": "a", "model": 3}', r"Expected `str`, got `int` - at `\$.model`"),
        (b'{"prompt_id": "a", "model": "m", "colour": 1}', "unknown field `colour`"),
        (b'{"prompt_id": "a", "model": "m"', "truncated"),
        (b"[1, 2]", "Expected `object`, got `array`"),
    ],
)
def test_a_bad_line_is_named_by_uri_and_line(tmp_path: Path, line: bytes, problem: str) -> None:
    storage = LocalStorage(tmp_path)
    good = b'{"prompt_id": "a", "model": "m", "text": "ok"}'
    storage.write_bytes("g.jsonl", good + b"\n\n" + line + b"\n")
    storage.commit("g.jsonl", {})
    with pytest.raises(RowError, match=r"g\.jsonl:3: not a valid GenerationRow: .*" + problem):
        list(read_records(storage, "g.jsonl", records.GenerationRecord))


def test_records_before_a_bad_line_of_the_same_block_are_read_first(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    good = b'{"prompt_id": "a", "model": "m", "text": "ok"}\n'
    storage.write_bytes("g.jsonl", good * 50 + b"\r\n  \n" + good + b'{"prompt_id": 1}\n' + good)
    storage.commit("g.jsonl", {})
    read = read_records(storage, "g.jsonl", records.GenerationRecord)
    assert [next(read).model for _ in range(51)] == ["m"] * 51
    with pytest.raises(RowError, match=r"g\.jsonl:54: not a valid GenerationRow: "):
        next(read)


def test_a_line_that_is_not_utf8_is_named_with_its_byte_offset(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write_bytes("g.jsonl", b'{"prompt_id": "a", "model": "m"}\n{"prompt_id": "\xff"}\n')
    storage.commit("g.jsonl", {})
    with pytest.raises(NotUtf8Error, match=r"g\.jsonl:2: not valid UTF-8 at byte offset 48"):
        list(read_records(storage, "g.jsonl", records.GenerationRecord))


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("count", [2, 4])
def test_request_encoder_gives_the_bytes_of_build_request(structured: bool, count: int) -> None:
    judge = JudgeSpec(
        model="judge-é", temperature=0.7, max_tokens=1234, structured_output=structured
    )
    row = rows.MixRow(
        prompt_id="id:with:colons ü",
        prompt=TRICKY,
        candidates=[rows.Candidate(model=f"m{i}", text=f"{i} {TRICKY}") for i in range(count)],
        order={a: list(reversed(range(count))) for a in DEFAULT_ASPECTS},
    )
    twin = msgspec.convert(row.model_dump(), records.MixRecord)
    encoder = RequestEncoder(judge, shard=12)
    for aspect in DEFAULT_ASPECTS:
        expected = encode_line(build_request(row, aspect, 12, judge))
        for mixed in (row, twin):
            line = encoder.encode(mixed, aspect)
            assert line.data == expected
            assert line.custom_id == f"sp:12:{aspect}:id:with:colons ü"


def test_request_encoder_refuses_a_row_without_the_aspects_order() -> None:
    row = rows.MixRow(
        prompt_id="p",
        prompt="q",
        candidates=[rows.Candidate(model="a", text="x"), rows.Candidate(model="b", text="y")],
        order={"honesty": [0, 1]},
    )
    with pytest.raises(ValueError, match="no answer order for aspect 'helpfulness'"):
        RequestEncoder(JudgeSpec(), 0).encode(row, "helpfulness")


def test_lines_written_in_many_batches_are_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl, "WRITE_BATCH_BYTES", 100)  # a write every line or two
    storage = LocalStorage(tmp_path)
    prompts = [
        rows.PromptRow(id=f"{i:016x}", text=f"{TRICKY} {i}" * (i % 3), source=f"f:{i}")
        for i in range(50)
    ]
    twins = [msgspec.convert(p.model_dump(), records.PromptRecord) for p in prompts]
    assert write_records(storage, "fast.jsonl", twins) == 50
    write_rows(storage, "slow.jsonl", prompts)
    assert storage.read_bytes("fast.jsonl") == storage.read_bytes("slow.jsonl")
    assert list(read_records(storage, "fast.jsonl", records.PromptRecord)) == twins


def test_byte_writers_store_what_the_text_writer_stores(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    text = f'{{"text": "{TRICKY}"}}\n' * 3
    with storage.open_writer("text.jsonl") as stream:
        stream.write(text)
    with storage.open_byte_writer("bytes.jsonl") as sink:  # LocalStorage's own: bytes as given
        sink.write(text.encode())
    with Storage.open_byte_writer(storage, "decoded.jsonl") as sink:  # the default: decoded
        for line in text.splitlines(keepends=True):
            sink.write(line.encode())
    stored = {key: storage.read_bytes(key) for key in ("bytes.jsonl", "decoded.jsonl")}
    assert stored == {key: storage.read_bytes("text.jsonl") for key in stored}
