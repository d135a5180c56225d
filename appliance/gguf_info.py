"""What a GGUF file's header says: architecture, context length, quantization, chat template."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf

from appliance.errors import ModelFileError
from appliance.safe_files import open_source_file

GGUF_MAGIC = b"GGUF"
HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class GgufInfo:
    """The facts about a GGUF model the registry keeps."""

    architecture: str
    context_length: int
    quantization: str
    chat_template: str | None
    size_bytes: int
    sha256: str
    display_name: str


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _quantization_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    try:
        return str(gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_"))
    except ValueError:
        return f"type-{file_type}"


def _sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    while chunk := handle.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def read_gguf_info(path: Path, *, allowed: tuple[Path, ...] = ()) -> GgufInfo:
    """Parse the header and tensor table of `path`; a non-GGUF or truncated file raises ModelFileError.

    The file is opened once, by appliance/safe_files.py's rules (no link, a regular file, inside
    `allowed` when that is not empty), and header, size and hash all come from that one descriptor.
    """
    with open_source_file(path, allowed=allowed) as handle:
        return _read_open(path, handle)


def _read_open(path: Path, handle: BinaryIO) -> GgufInfo:
    try:
        size = os.fstat(handle.fileno()).st_size
        magic = handle.read(4)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror})") from error
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        # The open file, not the name: numpy maps this very descriptor, whatever the name points to now.
        # GGUFReader hands its argument to np.memmap, which takes a file object too (its hint says paths).
        reader = gguf.GGUFReader(handle)  # type: ignore[arg-type]
    except (ValueError, IndexError, OSError) as error:
        raise ModelFileError(f"{path}: damaged or truncated GGUF header ({error})") from error
    # The reader maps tensors lazily, so check by hand that the last tensor's bytes are really there.
    data_end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if data_end > size:
        raise ModelFileError(f"{path}: truncated GGUF file ({size} bytes, tensors need {data_end})")
    architecture = _field(reader, "general.architecture")
    if not isinstance(architecture, str):
        raise ModelFileError(f"{path}: GGUF header has no general.architecture")
    context_length = _field(reader, f"{architecture}.context_length")
    template = _field(reader, "tokenizer.chat_template")
    name = _field(reader, "general.name")
    return GgufInfo(
        architecture=architecture,
        context_length=int(context_length) if context_length is not None else 2048,
        quantization=_quantization_name(_field(reader, "general.file_type")),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        size_bytes=size,
        sha256=_sha256(handle),
        display_name=name if isinstance(name, str) else path.stem,
    )
