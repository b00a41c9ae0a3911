"""The LZ4 chunk file format (the only module that reads or writes these bytes).

File layout (format version 1)::

    b"BHIVELZ4"                      8 bytes magic
    uint32 little-endian             length H of the JSON header
    uint32 little-endian             CRC32 of the JSON header
    H bytes                          JSON: format_version, dtype, shape, layout
    lz4 frame                        row-major array bytes, with content size + checksum

Legacy files of the original b-hive (no magic) hold one lz4 frame with the float32 array
``[n_rows, n_cols, data...]``; :func:`read_legacy_chunk` reads them.
"""

from __future__ import annotations

import json
import mmap
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import lz4.frame
import numpy as np

from utils.dataset.layout import ColumnLayout
from utils.errors import BHiveError
from utils.io import atomic_path

MAGIC = b"BHIVELZ4"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sII")


class ChunkFormatError(BHiveError, OSError):
    """A chunk file is corrupt, truncated or not a b-hive chunk."""


def write_chunk(path: str | Path, array: np.ndarray, layout: ColumnLayout,
                compression_level: int = 0) -> int:
    """Write ``array`` (rows x columns) atomically to ``path``; return the file size."""
    path = Path(path)
    if array.ndim != 2 or array.shape[1] != layout.n_columns:
        raise ValueError(f"array of shape {array.shape} does not match the layout with "
                         f"{layout.n_columns} columns")
    array = np.ascontiguousarray(array, dtype=layout.dtype)
    header = json.dumps({
        "format_version": FORMAT_VERSION,
        "dtype": layout.dtype,
        "shape": list(array.shape),
        "layout": layout.to_dict(),
    }).encode()
    body = lz4.frame.compress(array, compression_level=compression_level,
                              content_checksum=True, store_size=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(_PREAMBLE.pack(MAGIC, len(header), zlib.crc32(header)))
        f.write(header)
        f.write(body)
    return _PREAMBLE.size + len(header) + len(body)


def _read_header(path: Path, f: BinaryIO) -> dict:
    preamble = f.read(_PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size or preamble[:8] != MAGIC:
        raise ChunkFormatError(f"{path}: not a b-hive LZ4 chunk (bad magic bytes or truncated "
                               "header)")
    _, size, crc = _PREAMBLE.unpack(preamble)
    raw = f.read(size)
    if len(raw) != size or zlib.crc32(raw) != crc:
        raise ChunkFormatError(f"{path}: corrupt chunk header (truncated or checksum mismatch)")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ChunkFormatError(f"{path}: corrupt chunk header ({exc})") from exc
    if header.get("format_version") != FORMAT_VERSION:
        raise ChunkFormatError(f"{path}: unsupported chunk format version "
                               f"{header.get('format_version')!r} (this b-hive reads "
                               f"{FORMAT_VERSION})")
    return header


def read_header(path: str | Path) -> tuple[tuple[int, int], ColumnLayout]:
    """Shape and layout of a chunk without decompressing it."""
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_header(path, f)
    return tuple(header["shape"]), ColumnLayout.from_dict(header["layout"])


def read_chunk(path: str | Path) -> tuple[np.ndarray, ColumnLayout]:
    """Decompress a chunk; return a read-only (rows x columns) array and its layout.

    The compressed body is memory-mapped and decompressed in one call (no copy of the file).
    """
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_header(path, f)
        offset = f.tell()
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # empty file
            raise ChunkFormatError(f"{path}: truncated chunk (no data)") from exc
    try:
        with memoryview(mapped) as view:
            data = lz4.frame.decompress(view[offset:])
    except RuntimeError as exc:
        raise ChunkFormatError(f"{path}: corrupt or truncated LZ4 data ({exc})") from exc
    finally:
        mapped.close()
    rows, cols = header["shape"]
    dtype = np.dtype(header["dtype"])
    if len(data) != rows * cols * dtype.itemsize:
        raise ChunkFormatError(f"{path}: decompressed size {len(data)} does not match the "
                               f"header shape ({rows}, {cols}) of {dtype}")
    array = np.frombuffer(data, dtype=dtype).reshape(rows, cols)
    return array, ColumnLayout.from_dict(header["layout"])


def read_legacy_chunk(path: str | Path, dtype: str = "float32") -> np.ndarray:
    """Read an original b-hive chunk: one lz4 frame of ``[n_rows, n_cols, data...]``."""
    path = Path(path)
    try:
        data = lz4.frame.decompress(path.read_bytes())
    except RuntimeError as exc:
        raise ChunkFormatError(f"{path}: corrupt or truncated legacy LZ4 chunk ({exc})") from exc
    flat = np.frombuffer(data, dtype=dtype)
    if flat.size < 2:
        raise ChunkFormatError(f"{path}: legacy chunk is too short to hold its shape")
    n_rows, n_cols = int(flat[0]), int(flat[1])
    if n_cols <= 0 or flat.size - 2 != n_rows * n_cols:
        # The original stored only n_cols reliably (n_rows is inexact in float16).
        if n_cols <= 0 or (flat.size - 2) % n_cols:
            raise ChunkFormatError(f"{path}: legacy chunk size {flat.size - 2} does not match "
                                   f"its header ({n_rows}, {n_cols})")
    return flat[2:].reshape(-1, n_cols)
