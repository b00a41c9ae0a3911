"""The LZ4 batch loader: splitting, sampling, worker sharding, batch contents."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from utils.config import label_to_class
from utils.dataset.chunk_format import read_chunk
from utils.torch.data import (
    TEST,
    TRAIN,
    VALIDATION,
    ChunkDataset,
    DataError,
    Shard,
    dataset_shards,
    make_loader,
    split_shards,
)

GROUPS = ("global", "cpf", "npf", "vtx")


@pytest.fixture(scope="module")
def shards(demo_dataset):
    _, directory = demo_dataset
    return dataset_shards(directory)


@pytest.fixture(scope="module")
def mapping(demo_dataset):
    config, _ = demo_dataset
    return label_to_class(config.classes)


def test_shards_from_weights_json(demo_dataset, shards):
    _, directory = demo_dataset
    meta = json.loads((directory / "weights.json").read_text())
    assert [s.rows for s in shards] == meta["rows"] and len(shards) >= 3
    assert [s.sum_weight for s in shards] == pytest.approx(meta["sum_weight"])


def test_split_rules(shards):
    split = split_shards(shards, 0.85)
    assert split.validation and split.train and not split.warning
    assert len(split.train) + len(split.validation) == len(shards)
    two = split_shards(shards[:2], 0.99)
    assert len(two.train) == 1 and len(two.validation) == 1
    capped = split_shards(shards, 0.5, n_train=1)
    assert len(capped.train) == 1
    single = split_shards(shards[:1], 0.85)
    assert "only one chunk file" in single.warning
    assert single.train[0].stop == single.validation[0].start
    assert single.train[0].rows + single.validation[0].rows == shards[0].rows
    with pytest.raises(DataError, match="no chunk files"):
        split_shards([], 0.85)
    with pytest.raises(DataError, match="train-val-split"):
        split_shards(shards, 1.5)


def test_test_mode_yields_every_jet_once_in_order(shards, mapping):
    data = ChunkDataset(shards, GROUPS, mapping, 100, TEST, columns=("jet_pt",))
    batches = list(make_loader(data, 0))
    pts = np.concatenate([b["columns"][:, 0].numpy() for b in batches])
    expected = np.concatenate([read_chunk(s.path)[0][:, 0] for s in shards])
    np.testing.assert_array_equal(pts, expected)
    assert all(len(b["target"]) == 100 for b in batches[:-1])
    assert data.expected_batches() == len(batches)


def test_workers_read_disjoint_files(shards, mapping):
    data = ChunkDataset(shards, GROUPS, mapping, 64, VALIDATION, columns=("jet_pt",))
    pts = np.concatenate([b["columns"][:, 0].numpy() for b in make_loader(data, 2)])
    expected = np.concatenate([read_chunk(s.path)[0][:, 0] for s in shards])
    np.testing.assert_array_equal(np.sort(pts), np.sort(expected))


def test_batch_contents_match_chunk_rows(shards, mapping, demo_dataset):
    config, _ = demo_dataset
    data = ChunkDataset(shards[:1], GROUPS, mapping, 32, TEST)
    batch = next(iter(make_loader(data, 0)))
    rows, layout = read_chunk(shards[0].path)
    cpf = layout.block("cpf")
    expected_cpf = rows[:32, layout.slice("cpf")].reshape(32, cpf.length, len(cpf.features))
    np.testing.assert_array_equal(batch["inputs"]["cpf"].numpy(), expected_cpf)
    np.testing.assert_array_equal(batch["inputs"]["global"].numpy(),
                                  rows[:32, layout.slice("global")])
    labels = np.argmax(rows[:32, layout.slice("truth")], axis=1)
    expected_class = [mapping[config.truth_labels[i]] for i in labels]
    assert batch["target"].tolist() == expected_class
    assert batch["inputs"]["cpf"].dtype == torch.float32


def test_sampling_per_epoch_and_full_batches(shards, mapping):
    data = ChunkDataset(shards, GROUPS, mapping, 50, TRAIN, sampling=True, seed=1)
    data.set_epoch(0)
    first = [b["inputs"]["global"][:, 0].numpy() for b in make_loader(data, 0)]
    data.set_epoch(0)
    again = [b["inputs"]["global"][:, 0].numpy() for b in make_loader(data, 0)]
    data.set_epoch(1)
    other = [b["inputs"]["global"][:, 0].numpy() for b in make_loader(data, 0)]
    assert all(len(b) == 50 for b in first)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first)[:50], np.concatenate(other)[:50])
    # the expected number of batches (from the weight sums) is right within 5 % on average
    counts = []
    for epoch in range(20):
        data.set_epoch(epoch)
        counts.append(sum(len(b["target"]) for b in make_loader(data, 0)))
    assert np.mean(counts) == pytest.approx(data.expected_jets(), rel=0.05)


def test_loss_weighting_mode_keeps_all_jets(shards, mapping):
    data = ChunkDataset(shards, GROUPS, mapping, 50, TRAIN, sampling=False, seed=1)
    n = sum(len(b["target"]) for b in make_loader(data, 0))
    total = sum(s.rows for s in shards)
    assert total - 50 < n <= total
    assert data.expected_jets() == total


def test_sampling_and_loss_weighting_give_the_same_class_mix(shards, mapping):
    """Rejection sampling keeps a jet with probability = its weight; loss weighting weighs
    every jet by it: both see the same expected class mix."""
    n_classes = max(mapping.values()) + 1
    sampled = np.zeros(n_classes)
    data = ChunkDataset(shards, GROUPS, mapping, 50, TRAIN, sampling=True, seed=5)
    for epoch in range(30):
        data.set_epoch(epoch)
        for batch in make_loader(data, 0):
            sampled += np.bincount(batch["target"].numpy(), minlength=n_classes)
    weighted = np.zeros(n_classes)
    for batch in make_loader(ChunkDataset(shards, GROUPS, mapping, 50, TEST), 0):
        weighted += np.bincount(batch["target"].numpy(), weights=batch["weight"].numpy(),
                                minlength=n_classes)
    np.testing.assert_allclose(sampled / sampled.sum(), weighted / weighted.sum(), atol=0.01)


def test_training_epochs_have_a_fixed_number_of_full_batches(shards, mapping):
    from utils.torch.data import training_batches

    data = ChunkDataset(shards, GROUPS, mapping, 50, TRAIN, sampling=True, seed=1)
    steps = data.expected_batches()
    for threads in (0, 2):
        for epoch in range(3):
            data.set_epoch(epoch)
            sizes = [len(b["target"]) for b in training_batches(data, threads, steps)]
            assert sizes == [50] * steps
    # more steps than one sampling pass gives: further passes fill the epoch
    data.set_epoch(0)
    assert len(list(training_batches(data, 1, 3 * steps))) == 3 * steps
    tiny = ChunkDataset(shards[:1], GROUPS, mapping, 10**6, TRAIN, sampling=True, seed=1)
    with pytest.raises(DataError, match="fewer sampled jets than one batch of 1000000"):
        list(training_batches(tiny, 0, 1))
    # a pass that gives no batch after others did is no error (a small, down-weighted set)
    few = ChunkDataset(shards[:1], GROUPS, mapping, 50, TRAIN, sampling=True, seed=1)
    few.set_epoch(0)
    assert len(list(training_batches(few, 0, 4 * few.expected_batches()))) == \
        4 * few.expected_batches()


def test_precision_and_unused_labels(shards, mapping):
    data = ChunkDataset(shards[:1], GROUPS, {"isB": 0, "isG": 1}, 40, TEST, precision="float16")
    batches = list(make_loader(data, 0))
    assert batches[0]["inputs"]["npf"].dtype == torch.float16
    targets = torch.cat([b["target"] for b in batches])
    assert set(targets.tolist()) <= {0, 1}
    rows, layout = read_chunk(shards[0].path)
    labels = np.argmax(rows[:, layout.slice("truth")], axis=1)
    assert len(targets) == int(np.isin(labels, [0, 10]).sum())


def test_errors_name_the_problem(shards, mapping):
    with pytest.raises(DataError, match="no input groups \\['lost_tracks'\\]"):
        ChunkDataset(shards, ("global", "lost_tracks"), mapping, 10, TRAIN)
    with pytest.raises(DataError, match="isTau"):
        ChunkDataset(shards, GROUPS, {"isTau": 0}, 10, TRAIN)
    with pytest.raises(DataError, match="no train files"):
        ChunkDataset([], GROUPS, mapping, 10, TRAIN)
    with pytest.raises(DataError, match="batch-size"):
        ChunkDataset(shards, GROUPS, mapping, 0, TRAIN)
    with pytest.raises(DataError, match="jet_ptt"):
        ChunkDataset(shards, GROUPS, mapping, 10, TEST, columns=("jet_ptt",))
    assert isinstance(shards[0], Shard)


def test_thread_loader_stops_when_abandoned(shards, mapping):
    """Breaking out of an epoch (e.g. distributed ranks in lock-step) must not leave loader
    threads blocked on a full queue."""
    import threading

    from utils.torch.data import ThreadLoader

    before = threading.active_count()
    # one batch per worker: each worker then waits to hand over its end marker
    data = ChunkDataset(shards[:2], GROUPS, mapping, 10_000, VALIDATION)
    loader = iter(ThreadLoader(data, workers=2, prefetch=1))
    next(loader)
    loader.close()
    assert threading.active_count() == before


def test_split_rows_for_distributed_shares(shards):
    from utils.torch.data import split_rows

    pieces = split_rows(shards[:2], 3)
    assert len(pieces) == 6
    assert sum(p.rows for p in pieces) == shards[0].rows + shards[1].rows
    assert sum(p.sum_weight for p in pieces) == pytest.approx(
        shards[0].sum_weight + shards[1].sum_weight)
    first = [p for p in pieces if p.path == shards[0].path]
    assert first[0].start == 0 and first[-1].stop == shards[0].rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(first))
