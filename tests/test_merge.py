"""The staged-rows format and the merge, on hand-built staged chunks."""

from __future__ import annotations

import numpy as np
import pytest

from utils.dataset.chunk_format import read_chunk
from utils.dataset.layout import Block, ColumnLayout
from utils.dataset.merge import merge_staged, write_staged

LAYOUT = ColumnLayout((
    Block("global", "features", ("pt", "eta")),
    Block("cpf", "features", ("a", "b"), 3),
    Block("sv", "features", ("m",), 2),
    Block("process", "process", ("process",)),
    Block("truth", "truth", ("b", "l")),
    Block("weight", "weight", ("weight",)),
))


def test_flat_ranges_cover_the_per_jet_columns():
    assert LAYOUT.n_columns == 2 + 6 + 2 + 1 + 2 + 1
    assert LAYOUT.flat_ranges() == [(slice(0, 2), slice(0, 2)), (slice(10, 14), slice(2, 6))]
    assert LAYOUT.n_flat == 6
    assert LAYOUT.flat_slice("truth") == slice(3, 5)
    with pytest.raises(KeyError, match="cpf"):
        LAYOUT.flat_slice("cpf")


def make_run(rng, n, first_jet):
    """Staged jets with ids first_jet..: pt = the id, candidates a = id + slot / 10."""
    keys = np.sort(rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64))
    ids = first_jet + np.arange(n)
    flat = np.zeros((n, LAYOUT.n_flat), np.float32)
    flat[:, 0] = ids
    flat[:, 1] = 0.5
    flat[np.arange(n), 3 + ids % 2] = 1.0  # truth one-hot: b for even, l for odd ids
    cpf_counts = rng.integers(0, 4, n).astype(np.int32)
    slot = np.concatenate([np.arange(c) for c in cpf_counts]) if n else np.zeros(0)
    jet = np.repeat(ids, cpf_counts)
    cpf = np.stack([jet + slot / 10, -jet], axis=1).astype(np.float32)
    sv_counts = rng.integers(0, 3, n).astype(np.int32)
    sv = np.repeat(ids, sv_counts)[:, None].astype(np.float32)
    return keys, flat, [(cpf_counts, cpf), (sv_counts, sv)]


def test_rows_follow_the_key_order_with_exact_sizes_and_padding(tmp_path):
    rng = np.random.default_rng(3)
    staged, expected = [], {}
    for i, (n, first) in enumerate([(40, 0), (0, 100), (75, 1000), (23, 5000)]):
        keys, flat, candidates = make_run(rng, n, first)
        path = tmp_path / f"{i:06d}_000000000000.raw"
        if n:
            write_staged(path, keys, flat, candidates)
            staged.append((str(path), n))
        cpf_at = np.concatenate([[0], np.cumsum(candidates[0][0])])
        sv_at = np.concatenate([[0], np.cumsum(candidates[1][0])])
        for j in range(n):
            expected[int(keys[j])] = (flat[j], candidates[0][1][cpf_at[j]:cpf_at[j + 1]],
                                      candidates[1][1][sv_at[j]:sv_at[j + 1]])
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    tables = np.ones((2, 1, 1))
    result = merge_staged(staged[::-1], LAYOUT, out, chunk_size=32, tables=tables,
                          pt_key="pt", eta_key="eta", pt_bins=(0.0, 1e9),
                          eta_bins=(-5.0, 5.0), workers=2, advance=seen.append, sample=40,
                          extract=lambda rows: rows.copy(), on_sample=np.concatenate)
    assert result.rows == [32, 32, 32, 32, 10] and sorted(seen) == [10, 32, 32, 32, 32]
    rows = np.concatenate([read_chunk(p)[0] for p in result.files])
    np.testing.assert_array_equal(result.sample_result, rows[:40])
    order = sorted(expected)  # the output is the key order
    assert len(rows) == len(order) == 138
    for row, key in zip(rows, order, strict=True):
        flat, cpf, sv = expected[key]
        np.testing.assert_array_equal(row[[0, 1, 10, 11, 12]], flat[:5])
        assert row[13] == 1.0  # weight
        padded = np.zeros((3, 2), np.float32)
        padded[:len(cpf)] = cpf
        np.testing.assert_array_equal(row[2:8].reshape(3, 2), padded)
        padded = np.zeros(2, np.float32)
        padded[:len(sv)] = sv[:, 0]
        np.testing.assert_array_equal(row[8:10], padded)
    assert result.sum_weight == [32.0, 32.0, 32.0, 32.0, 10.0]


def test_inconsistent_staged_files_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    keys, flat, candidates = make_run(rng, 10, 0)
    path = tmp_path / "000000_000000000000.raw"
    write_staged(path, keys, flat, candidates)
    kwargs = dict(layout=LAYOUT, out_dir=tmp_path, chunk_size=5, tables=np.ones((2, 1, 1)),
                  pt_key="pt", eta_key="eta", pt_bins=(0.0, 1e9), eta_bins=(-5.0, 5.0))
    with pytest.raises(ValueError, match=r"\.c0 has \d+ bytes, expected"):
        write_staged(path, keys, flat, [(candidates[0][0], candidates[0][1][:-1]),
                                        candidates[1]])
        merge_staged([(str(path), 10)], **kwargs)
    write_staged(path, keys[::-1], flat, candidates)
    with pytest.raises(ValueError, match="not sorted by their keys"):
        merge_staged([(str(path), 10)], **kwargs)
    write_staged(path, keys, flat, candidates)
    with pytest.raises(ValueError, match=r"\.keys has 80 bytes, expected 88"):
        merge_staged([(str(path), 11)], **kwargs)
    assert not list(tmp_path.glob("file_*"))


def test_slices_without_candidates_and_weights_from_label_and_pt(tmp_path):
    """A staged chunk whose jets have no SVs at all merges (padding only), and every row's
    weight is the table entry of its truth label and pT bin."""
    rng = np.random.default_rng(7)
    staged = []
    for i, first in enumerate((0, 500)):
        keys, flat, candidates = make_run(rng, 60, first)
        if i == 1:  # no SV in any jet of this chunk
            candidates[1] = (np.zeros(60, np.int32), np.zeros((0, 1), np.float32))
        path = tmp_path / f"{i:06d}_000000000000.raw"
        write_staged(path, keys, flat, candidates)
        staged.append((str(path), 60))
    out = tmp_path / "out"
    out.mkdir()
    tables = np.array([[[2.0], [3.0]], [[5.0], [7.0]]])  # label x pT bin (edge at 300) x eta
    result = merge_staged(staged, LAYOUT, out, chunk_size=25, tables=tables, pt_key="pt",
                          eta_key="eta", pt_bins=(0.0, 300.0, 1e9), eta_bins=(-5.0, 5.0),
                          workers=2)
    rows = np.concatenate([read_chunk(p)[0] for p in result.files])
    assert len(rows) == 120
    ids = rows[:, 0].astype(int)
    label = ids % 2
    expected = tables[label, (ids >= 300).astype(int), 0]
    np.testing.assert_array_equal(rows[:, 13], expected)
    assert np.all(rows[ids >= 500][:, 8:10] == 0)  # the chunk without SVs: padding only
    assert np.any(rows[ids < 500][:, 8:10] != 0)
    assert sum(result.sum_weight) == pytest.approx(expected.sum())
