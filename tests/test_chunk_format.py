"""LZ4 chunk format: round trip, self-description, corruption, legacy files."""

from __future__ import annotations

import lz4.frame
import numpy as np
import pytest

from utils.dataset.chunk_format import (
    ChunkFormatError,
    ChunkReader,
    read_chunk,
    read_header,
    read_legacy_chunk,
    write_chunk,
)
from utils.dataset.layout import ColumnLayout


@pytest.fixture
def layout(offline_config):
    return ColumnLayout.from_config(offline_config)


def _rows(layout, n=257, seed=0):
    return np.random.default_rng(seed).normal(size=(n, layout.n_columns)).astype(np.float32)


def test_layout_columns(layout, offline_config):
    assert layout.n_columns == 15 + 400 + 150 + 48 + 1 + 11 + 1
    names = layout.column_names()
    assert len(names) == layout.n_columns
    assert names[0] == "jet_pt" and names[15] == "cpf[0].Cpfcan_BtagPf_trackEtaRel"
    assert names[15 + 16] == "cpf[1].Cpfcan_BtagPf_trackEtaRel"
    assert layout.column("Cpfcan_ptrel", 2) == names.index("cpf[2].Cpfcan_ptrel")
    assert names[layout.process_column] == "process"
    assert names[layout.weight_column] == "weight" == names[-1]
    assert layout.truth_labels == offline_config.truth_labels
    assert ColumnLayout.from_dict(layout.to_dict()) == layout


def test_round_trip(tmp_path, layout):
    rows = _rows(layout)
    path = tmp_path / "file_0.lz4"
    write_chunk(path, rows, layout)
    back, back_layout = read_chunk(path)
    np.testing.assert_array_equal(back, rows)
    assert back_layout == layout
    assert read_header(path) == ((len(rows), layout.n_columns), layout)
    assert not list(tmp_path.glob(".*tmp*"))


def test_float16_storage(tmp_path, offline_config):
    layout = ColumnLayout.from_config(offline_config.replace(storage_dtype="float16"))
    rows = _rows(layout, 50)
    write_chunk(tmp_path / "f.lz4", rows, layout)
    back, back_layout = read_chunk(tmp_path / "f.lz4")
    assert back.dtype == np.float16 and back_layout.dtype == "float16"
    np.testing.assert_array_equal(back, rows.astype(np.float16))


def test_shape_mismatch_is_rejected(tmp_path, layout):
    with pytest.raises(ValueError, match="does not match the layout"):
        write_chunk(tmp_path / "f.lz4", np.zeros((3, 5), np.float32), layout)


@pytest.mark.parametrize("damage", ["flip_body", "truncate_body", "truncate_header",
                                    "bad_magic", "flip_header"])
def test_corrupt_file_names_path(tmp_path, layout, damage):
    path = tmp_path / "file_3.lz4"
    write_chunk(path, _rows(layout), layout)
    data = bytearray(path.read_bytes())
    if damage == "flip_body":
        data[-100] ^= 0xFF
    elif damage == "truncate_body":
        data = data[:-1000]
    elif damage == "truncate_header":
        data = data[:30]
    elif damage == "bad_magic":
        data[0:8] = b"NOTBHIVE"
    elif damage == "flip_header":
        data[20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChunkFormatError, match=str(path)):
        read_chunk(path)


def test_legacy_reader(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    flat = np.concatenate([[3, 4], data.ravel()]).astype(np.float32)
    path = tmp_path / "legacy.lz4"
    path.write_bytes(lz4.frame.compress(flat.tobytes()))
    np.testing.assert_array_equal(read_legacy_chunk(path), data)
    path.write_bytes(lz4.frame.compress(flat.tobytes())[:-10])
    with pytest.raises(ChunkFormatError, match="legacy.lz4"):
        read_legacy_chunk(path)
    path.write_bytes(lz4.frame.compress(np.array([3, 5, 1, 2, 3], np.float32).tobytes()))
    with pytest.raises(ChunkFormatError, match="does not match its header"):
        read_legacy_chunk(path)


def test_blocks_carry_checksums_and_old_content_checksum_chunks_still_read(tmp_path, layout):
    rows = _rows(layout, 300)
    path = tmp_path / "f.lz4"
    write_chunk(path, rows, layout)
    raw = path.read_bytes()
    body = raw[16 + int.from_bytes(raw[8:12], "little"):]
    info = lz4.frame.get_frame_info(body)
    assert info["block_checksum"] and not info["content_checksum"]
    # a chunk as written before (one checksum of the decompressed content) reads the same
    old = raw[:len(raw) - len(body)] + lz4.frame.compress(rows, content_checksum=True,
                                                          store_size=True)
    (tmp_path / "old.lz4").write_bytes(old)
    np.testing.assert_array_equal(read_chunk(tmp_path / "old.lz4")[0], rows)


def test_reader_reuses_its_buffer_and_survives_a_corrupt_chunk(tmp_path, layout):
    big, small = _rows(layout, 300, seed=1), _rows(layout, 40, seed=2)
    write_chunk(tmp_path / "big.lz4", big, layout)
    write_chunk(tmp_path / "small.lz4", small, layout)
    raw = bytearray((tmp_path / "big.lz4").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.lz4").write_bytes(bytes(raw))
    reader = ChunkReader()
    first, _ = reader.read(tmp_path / "big.lz4")
    np.testing.assert_array_equal(first, big)
    assert not first.flags.writeable
    second, _ = reader.read(tmp_path / "small.lz4")
    np.testing.assert_array_equal(second, small)
    assert np.shares_memory(first, second)  # one buffer, no fresh memory per chunk
    with pytest.raises(ChunkFormatError, match="bad.lz4.*corrupt"):
        reader.read(tmp_path / "bad.lz4")
    np.testing.assert_array_equal(reader.read(tmp_path / "big.lz4")[0], big)
