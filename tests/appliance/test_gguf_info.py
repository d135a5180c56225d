"""GGUF headers: what the real model says, a tiny hand-made model, and damaged files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.errors import ModelFileError
from appliance.gguf_info import GgufInfo, read_gguf_info
from tests.gguf_files import write_tiny_gguf


@pytest.fixture(scope="module")
def model_info(model_path: Path) -> GgufInfo:
    """The real model's header, read once for the module."""
    return read_gguf_info(model_path)


def _truncated_copy(source: Path, target: Path, size: int) -> Path:
    with source.open("rb") as handle:
        target.write_bytes(handle.read(size))
    return target


def test_real_model_header(model_info: GgufInfo, model_path: Path) -> None:
    """SmolLM2's header gives llama, 8192 tokens of context, Q4_1, and its exact size."""
    assert model_info.architecture == "llama"
    assert model_info.context_length == 8192
    assert model_info.quantization == "Q4_1"
    assert model_info.size_bytes == model_path.stat().st_size


def test_real_model_has_chat_template(model_info: GgufInfo) -> None:
    """SmolLM2 ships a ChatML template in its header."""
    assert model_info.chat_template is not None
    assert "<|im_start|>" in model_info.chat_template
    assert "add_generation_prompt" in model_info.chat_template


def test_real_model_sha256_matches_hashlib(model_info: GgufInfo, model_path: Path) -> None:
    """The recorded sha256 is the SHA-256 of the whole file."""
    digest = hashlib.sha256()
    with model_path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    assert model_info.sha256 == digest.hexdigest()


def test_tiny_gguf_without_chat_template(tmp_path: Path) -> None:
    """A minimal GGUF written with the gguf package parses, and has no chat template."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf")

    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.context_length == 256
    assert info.quantization == "F16"
    assert info.chat_template is None
    assert info.size_bytes == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.display_name == "tiny"


def test_text_file_is_not_gguf(tmp_path: Path) -> None:
    """A plain text file raises ModelFileError saying it is not a GGUF file."""
    path = tmp_path / "notes.gguf"
    path.write_text("this is not a model\n", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        read_gguf_info(path)


def test_empty_file_is_not_gguf(tmp_path: Path) -> None:
    """An empty file raises ModelFileError, not an exception from the parser."""
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        read_gguf_info(path)


def test_missing_file_is_model_file_error(tmp_path: Path) -> None:
    """A path that does not exist raises ModelFileError naming the path."""
    path = tmp_path / "absent.gguf"
    with pytest.raises(ModelFileError, match=r"absent\.gguf"):
        read_gguf_info(path)


def test_half_truncated_model_is_refused(model_path: Path, tmp_path: Path) -> None:
    """The real model cut to half its size raises ModelFileError mentioning truncation."""
    size = model_path.stat().st_size
    path = _truncated_copy(model_path, tmp_path / "half.gguf", size // 2)
    with pytest.raises(ModelFileError, match="truncated") as caught:
        read_gguf_info(path)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("size", [4, 5, 24, 3000])
def test_model_truncated_in_header_is_refused(model_path: Path, tmp_path: Path, size: int) -> None:
    """The real model cut inside its header (magic only, a few bytes, 3 kB) raises ModelFileError."""
    path = _truncated_copy(model_path, tmp_path / "short.gguf", size)
    with pytest.raises(ModelFileError, match="truncated"):
        read_gguf_info(path)
