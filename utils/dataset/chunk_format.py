"""The LZ4 chunk file format (the only module that reads or writes these bytes).

File layout (format version 1)::

    b"BHIVELZ4"                      8 bytes magic
    uint32 little-endian             length H of the JSON header
    uint32 little-endian             CRC32 of the JSON header
    H bytes                          JSON: format_version, dtype, shape, layout
    lz4 frame                        row-major array bytes, with content size and an xxh32
                                     checksum of every compressed block

Integrity is checked on the compressed blocks (cheap: they are smaller than the array and
the check runs inside the decompression); chunks written before (a checksum of the whole
decompressed content instead) are read the same way.

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
_LEGACY_PROBE = 1 << 16  # bytes read to decompress the shape of a legacy chunk
# LZ4 fast mode: acceleration 64 compresses padded float rows ~2.5x faster than the default
# (acceleration 1) for 1.5 % larger files (ratio 1.62 instead of 1.64); decompression is as
# fast
LZ4_ACCELERATION = 64
LZ4_BLOCK_SIZE = lz4.frame.BLOCKSIZE_MAX256KB
_WRITE_PIECE = 4 << 20  # bytes compressed per call


class ChunkFormatError(BHiveError, OSError):
    """A chunk file is corrupt, truncated or not a b-hive chunk."""


def write_chunk(path: str | Path, array: np.ndarray, layout: ColumnLayout) -> int:
    """Write ``array`` (rows x columns) atomically to ``path``; return the file size.

    The LZ4 frame is compressed piece by piece straight into the file (no second copy of
    the compressed array in fresh memory) in LZ4's fast mode with acceleration
    ``LZ4_ACCELERATION``.
    """
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
    context = lz4.frame.create_compression_context()
    size = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f, \
            memoryview(array).cast("B") as data:
        size += f.write(_PREAMBLE.pack(MAGIC, len(header), zlib.crc32(header)))
        size += f.write(header)
        size += f.write(lz4.frame.compress_begin(
            context, compression_level=-LZ4_ACCELERATION, block_size=LZ4_BLOCK_SIZE,
            block_checksum=True, content_checksum=False, source_size=data.nbytes))
        for start in range(0, data.nbytes, _WRITE_PIECE):
            with data[start:start + _WRITE_PIECE] as piece:
                size += f.write(lz4.frame.compress_chunk(context, piece))
        size += f.write(lz4.frame.compress_flush(context))
    return size


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


class ChunkReader:
    """Reads chunks one after another into one reused buffer.

    The array :meth:`read` returns is a read-only view of that buffer, valid until the next
    call. Decompressing piece by piece into memory that is already mapped avoids faulting in
    fresh pages for every chunk, which costs more than the decompression itself.
    """

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)

    def read(self, path: str | Path) -> tuple[np.ndarray, ColumnLayout]:
        """Decompress ``path`` (block checksums verified); return (rows x columns, layout)."""
        path = Path(path)
        with open(path, "rb") as f:
            header = _read_header(path, f)
            offset = f.tell()
            try:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # empty file
                raise ChunkFormatError(f"{path}: truncated chunk (no data)") from exc
        rows, cols = header["shape"]
        dtype = np.dtype(header["dtype"])
        size = rows * cols * dtype.itemsize
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=np.uint8)
        try:
            # every view is released explicitly (an error's traceback must not pin the map)
            with memoryview(mapped) as view, view[offset:] as body:
                filled = decompress_into(path, body, self._buffer[:size])
        finally:
            mapped.close()
        if filled != size:
            raise ChunkFormatError(f"{path}: decompressed size {filled} does not match the "
                                   f"header shape ({rows}, {cols}) of {dtype}")
        array = self._buffer[:size].view(dtype).reshape(rows, cols)
        array.flags.writeable = False
        return array, ColumnLayout.from_dict(header["layout"])


_PIECE = 1 << 20  # bytes decompressed per call: small enough to reuse the allocator's memory


def decompress_into(path: Path, body: memoryview, out: np.ndarray) -> int:
    """Decompress the LZ4 frame ``body`` into ``out`` (uint8); return the bytes it held."""
    context = lz4.frame.create_decompression_context()
    read_at, filled, done = 0, 0, False
    try:
        while not done:
            if read_at >= len(body):
                raise ChunkFormatError(f"{path}: truncated LZ4 data (the frame does not end)")
            with body[read_at:] as rest:
                piece, used, done = lz4.frame.decompress_chunk(context, rest, max_length=_PIECE)
            read_at += used
            if filled + len(piece) > out.size:
                raise ChunkFormatError(f"{path}: the LZ4 data holds more than the header "
                                       f"shape ({out.size} bytes)")
            out[filled:filled + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            filled += len(piece)
    except RuntimeError as exc:
        raise ChunkFormatError(f"{path}: corrupt or truncated LZ4 data ({exc})") from exc
    return filled


def read_chunk(path: str | Path) -> tuple[np.ndarray, ColumnLayout]:
    """Decompress a chunk; return a read-only (rows x columns) array and its layout."""
    return ChunkReader().read(path)


def _legacy_shape(path: Path, head: np.ndarray) -> tuple[int, int]:
    if head.size < 2:
        raise ChunkFormatError(f"{path}: legacy chunk is too short to hold its shape")
    n_rows, n_cols = float(head[0]), float(head[1])
    if not (np.isfinite(n_cols) and n_cols >= 1 and n_cols == int(n_cols)):
        raise ChunkFormatError(f"{path}: legacy chunk header ({head[0]}, {head[1]}) holds no "
                               "column count (not a chunk of the original b-hive, or another "
                               "--config data_precision)")
    # n_rows is inexact (or inf) in float16 files: the original's readers used only n_cols
    return (int(n_rows) if np.isfinite(n_rows) else -1), int(n_cols)


def read_legacy_shape(path: str | Path, dtype: str = "float32") -> tuple[int, int]:
    """``(n_rows, n_cols)`` stored at the start of an original b-hive chunk, decompressing
    only its first block (``n_rows`` is -1 where the dtype cannot hold it)."""
    path = Path(path)
    with open(path, "rb") as f:
        start = f.read(_LEGACY_PROBE)
    if start[:8] == MAGIC:
        raise ChunkFormatError(f"{path}: a chunk of this framework, not of the original b-hive")
    itemsize = np.dtype(dtype).itemsize
    try:
        head = lz4.frame.LZ4FrameDecompressor().decompress(start, max_length=2 * itemsize)
    except RuntimeError as exc:
        raise ChunkFormatError(f"{path}: not an LZ4 frame, or a corrupt one ({exc})") from exc
    return _legacy_shape(path, np.frombuffer(head[:len(head) // itemsize * itemsize],
                                             dtype=dtype))


def read_legacy_chunk(path: str | Path, dtype: str = "float32") -> np.ndarray:
    """Read an original b-hive chunk: one lz4 frame of ``[n_rows, n_cols, data...]``; return
    the read-only (rows x columns) array."""
    path = Path(path)
    try:
        data = lz4.frame.decompress(path.read_bytes())
    except RuntimeError as exc:
        raise ChunkFormatError(f"{path}: corrupt or truncated legacy LZ4 chunk ({exc})") from exc
    itemsize = np.dtype(dtype).itemsize
    if len(data) % itemsize:
        raise ChunkFormatError(f"{path}: {len(data)} bytes are not a whole number of {dtype} "
                               "values (another data_precision?)")
    flat = np.frombuffer(data, dtype=dtype)
    n_rows, n_cols = _legacy_shape(path, flat[:2])
    if (flat.size - 2) % n_cols or (n_rows >= 0 and dtype != "float16"
                                    and flat.size - 2 != n_rows * n_cols):
        raise ChunkFormatError(f"{path}: legacy chunk size {flat.size - 2} does not match "
                               f"its header ({n_rows} rows, {n_cols} columns)")
    return flat[2:].reshape(-1, n_cols)
