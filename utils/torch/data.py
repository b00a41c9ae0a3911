"""Loading exported LZ4 chunks as batches for PyTorch.

:class:`ChunkDataset` is an ``IterableDataset`` that yields whole batches. Per chunk it
decompresses the file once (into a buffer reused from chunk to chunk), draws a row
permutation, applies rejection sampling with the stored per-jet weights (re-drawn every
epoch, seeded by (seed, epoch, worker)) and gathers each batch's rows in one copy. Loader
workers (threads of :class:`ThreadLoader`, or torch DataLoader processes) read disjoint
shards; leftovers are carried across chunks so training batches are full.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from utils.dataset.chunk_format import ChunkReader, read_header
from utils.dataset.directory import DatasetDirectory
from utils.dataset.layout import ColumnLayout
from utils.errors import BHiveError
from utils.settings import TrainSettings

TRAIN, VALIDATION, TEST = "train", "validation", "test"
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DataError(BHiveError, ValueError):
    """The dataset cannot provide what was asked (no files, no jets of a class, ...)."""


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one chunk file (``stop=None``: to the end)."""

    path: Path
    start: int = 0
    stop: int | None = None
    rows: int = 0
    sum_weight: float = 0.0


@dataclass
class Split:
    train: list[Shard]
    validation: list[Shard]
    warning: str = ""


def dataset_shards(dataset_dir: str | Path) -> list[Shard]:
    """One shard per chunk file of an exported dataset (rows and weight sum from its
    bookkeeping); the dataset must be complete."""
    directory = DatasetDirectory(dataset_dir)
    directory.check()
    return [Shard(c.path, 0, None, c.rows, c.sum_weight) for c in directory.chunks()]


def split_shards(shards: Sequence[Shard], fraction: float = TrainSettings.train_val_split,
                 n_train: int | None = None) -> Split:
    """Split into training and validation by file; a single file is split by rows.

    Validation takes files from the end until it holds at least ``1 - fraction`` of the jets;
    with >= 2 files both sides get at least one file. ``n_train`` caps the training files.
    """
    if not 0 < fraction < 1:
        raise DataError(f"--train-val-split must be in (0, 1), got {fraction}")
    if not shards:
        raise DataError("the dataset has no chunk files: nothing to train on")
    if len(shards) == 1:
        s = shards[0]
        cut = int(round(s.rows * fraction))
        if cut < 1 or cut >= s.rows:
            raise DataError(f"{s.path} has {s.rows} jets: too few to split into training "
                            "and validation")
        share = s.sum_weight / max(s.rows, 1)
        warning = (f"only one chunk file ({s.path.name}): training on its first {cut} jets and "
                   f"validating on the other {s.rows - cut}; use a smaller --chunk-size for a "
                   "file-level split")
        return Split([Shard(s.path, 0, cut, cut, share * cut)],
                     [Shard(s.path, cut, s.rows, s.rows - cut, share * (s.rows - cut))], warning)
    # validation: the last files, until they hold at least (1 - fraction) of the jets
    total = sum(s.rows for s in shards)
    k, held = len(shards), 0
    while k > 1 and (held < (1 - fraction) * total or k == len(shards)):
        k -= 1
        held += shards[k].rows
    train, validation = list(shards[:k]), list(shards[k:])
    if n_train is not None and n_train > 0:
        train = train[:n_train]
    return Split(train, validation)


def split_rows(shards: Sequence[Shard], parts: int) -> list[Shard]:
    """Each shard cut into ``parts`` row ranges (for balanced distributed shares)."""
    out = []
    for shard in shards:
        start, stop = shard.start, shard.start + shard.rows
        edges = np.linspace(start, stop, parts + 1).round().astype(int)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if hi > lo:
                share = (hi - lo) / max(shard.rows, 1)
                out.append(Shard(shard.path, int(lo), int(hi), int(hi - lo),
                                 shard.sum_weight * share))
    return out


class ChunkDataset(IterableDataset):
    """Batches from LZ4 chunk shards (see module doc).

    Yields dicts: ``inputs`` (group name -> tensor), ``target`` (class index), ``weight``,
    ``process``, ``truth_label`` (truth-label index) and, if ``columns`` are requested,
    ``columns`` (batch, len(columns)) with those per-jet features (e.g. pT, eta) and, with
    ``observers``, ``observers`` (batch, n_observers) float64, exact.
    Training mode permutes and (with ``sampling``) rejection-samples; other modes keep every
    usable jet in file order.
    """

    def __init__(self, shards: Sequence[Shard], groups: Sequence[str],
                 label_to_class: Mapping[str, int], batch_size: int, mode: str = TRAIN,
                 sampling: bool = True, seed: int = 0, precision: str = "float32",
                 columns: Sequence[str] = (), observers: bool = False) -> None:
        super().__init__()
        if not shards:
            raise DataError(f"no {mode} files")
        if batch_size < 1:
            raise DataError(f"--batch-size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise DataError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.shards = list(shards)
        self.layout: ColumnLayout = read_header(self.shards[0].path)[1]
        available = [b.name for b in self.layout.feature_blocks]
        missing = [g for g in groups if g not in available]
        if missing:
            raise DataError(f"{self.shards[0].path}: no input groups {missing}; the dataset has "
                            f"{available}")
        self.groups = list(groups)
        self.batch_size = batch_size
        self.mode = mode
        self.sampling = sampling and mode == TRAIN
        self.seed = seed
        self.dtype = PRECISIONS[precision]
        self.epoch = 0
        self.draw = 0  # further sampling passes of an epoch (see training_batches)
        self.rank, self.world = 0, 1
        self.observers = observers and bool(self.layout.observer_names)
        try:
            self.columns = [self.layout.column(name) for name in columns]
        except KeyError as exc:
            raise DataError(f"{self.shards[0].path}: {exc.args[0]}") from None
        labels = self.layout.truth_labels
        unknown = sorted(set(label_to_class) - set(labels))
        if unknown:
            raise DataError(f"classes name truth labels {unknown} that the dataset does not have "
                            f"(it has {list(labels)})")
        # truth-label index -> class index (-1: label not used by the model, jet skipped)
        self.class_of = np.array([label_to_class.get(label, -1) for label in labels])
        self._readers: list[ChunkReader] = []  # decompression buffers kept across epochs
        self._readers_lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Picklable for DataLoader worker processes (without the buffers and the lock)."""
        state = self.__dict__.copy()
        state["_readers"], state["_readers_lock"] = [], None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._readers_lock = threading.Lock()

    def set_epoch(self, epoch: int, draw: int = 0) -> None:
        """Draw a new file order, permutation and sampling for this epoch (``draw``: a
        further pass within the epoch)."""
        self.epoch, self.draw = epoch, draw

    def set_rank(self, rank: int, world: int) -> None:
        """Distributed training: this process reads every ``world``-th file of each epoch's
        file order (a disjoint share per rank)."""
        self.rank, self.world = rank, world

    def expected_jets(self) -> float:
        """Jets per epoch (of this rank's share): sum of weights when sampling, else rows."""
        total = sum(s.sum_weight for s in self.shards) if self.sampling else \
            float(sum(s.rows for s in self.shards))
        return total / self.world

    def expected_batches(self) -> int:
        """Batches per epoch: for training the fixed number :func:`training_batches` yields
        (at least 1), else every jet in batches."""
        jets = self.expected_jets()
        return max(1, int(jets // self.batch_size)) if self.mode == TRAIN else \
            math.ceil(jets / self.batch_size)

    def _my_shards(self, worker: int, n_workers: int) -> list[Shard]:
        shards = list(self.shards)
        if self.mode == TRAIN:
            order = np.random.default_rng((self.seed, self.epoch, self.draw)).permutation(
                len(shards))
            shards = [shards[i] for i in order]
        if self.world > 1:  # balance the ranks' jets: next file to the least loaded rank
            load = np.zeros(self.world)
            mine = []
            for shard in shards:
                rank = int(np.argmin(load))
                load[rank] += shard.sum_weight if self.sampling else shard.rows
                if rank == self.rank:
                    mine.append(shard)
            shards = mine
        return shards[worker::n_workers]

    def _select(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Row indices to use from a chunk, in the order they are batched."""
        labels = np.argmax(rows[:, self.layout.slice("truth")], axis=1)
        usable = self.class_of[labels] >= 0
        if self.mode == TRAIN:
            order = rng.permutation(len(rows))
            keep = usable[order]
            if self.sampling:
                weights = rows[order, self.layout.weight_column].astype(np.float64)
                keep &= rng.random(len(rows)) < weights
            return order[keep]
        return np.flatnonzero(usable)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is None:
            return self.iterate()
        return self.iterate(info.id, info.num_workers)

    def iterate(self, worker: int = 0, n_workers: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the shards owned by ``worker`` of ``n_workers`` (disjoint files)."""
        rng = np.random.default_rng((self.seed, self.epoch, self.draw, self.rank, worker))
        with self._readers_lock:  # a buffer no running iteration uses (already in memory)
            reader = self._readers.pop() if self._readers else ChunkReader()
        try:
            yield from self._iterate(reader, rng, worker, n_workers)
        finally:
            with self._readers_lock:
                self._readers.append(reader)

    def _iterate(self, reader: ChunkReader, rng: np.random.Generator, worker: int,
                 n_workers: int) -> Iterator[dict[str, torch.Tensor]]:
        # one reused buffer: each chunk overwrites the previous one
        pending: list[tuple[np.ndarray, np.ndarray]] = []  # copied rows of a partial batch
        n_pending = 0
        for shard in self._my_shards(worker, n_workers):
            rows = reader.read(shard.path)[0][shard.start:shard.stop]
            index = self._select(rows, rng)
            start = 0
            if n_pending:
                start = self.batch_size - n_pending
                part = index[:start]
                pending.append((rows, part))
                n_pending += len(part)
                if n_pending == self.batch_size:
                    yield self._batch(pending)
                    pending, n_pending = [], 0
                else:  # this chunk did not complete the batch: keep its rows
                    pending[-1] = (rows[part], np.arange(len(part)))
            for lo in range(start, len(index), self.batch_size):
                part = index[lo:lo + self.batch_size]
                if len(part) == self.batch_size:
                    yield self._batch([(rows, part)])
                else:
                    pending, n_pending = [(rows[part], np.arange(len(part)))], len(part)
        if n_pending and self.mode != TRAIN:
            yield self._batch(pending)

    def _batch(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        # whole rows in one gather (contiguous copies), then each group from that table
        picked = [np.take(rows, index, axis=0) for rows, index in parts if len(index)]
        table = picked[0] if len(picked) == 1 else np.concatenate(picked)

        def gather(columns: slice | int | list[int]) -> np.ndarray:
            return table[:, columns]

        inputs = {}
        for name in self.groups:
            block = self.layout.block(name)
            values = gather(self.layout.slice(name))
            if block.length is not None:
                values = values.reshape(len(values), block.length, len(block.features))
            inputs[name] = torch.from_numpy(np.ascontiguousarray(values)).to(self.dtype)
        labels = np.argmax(gather(self.layout.slice("truth")), axis=1)
        batch = {
            "inputs": inputs,
            "target": torch.from_numpy(self.class_of[labels]),
            "weight": torch.from_numpy(gather(self.layout.weight_column).astype(np.float32)),
            "process": torch.from_numpy(gather(self.layout.process_column).astype(np.int64)),
            "truth_label": torch.from_numpy(labels),
        }
        if self.columns:
            batch["columns"] = torch.from_numpy(gather(self.columns).astype(np.float32))
        if self.observers:
            values = self.layout.decode_observers(gather(self.layout.slice("observers")))
            batch["observers"] = torch.from_numpy(np.stack(list(values.values()), axis=1))
        return batch


class ThreadLoader:
    """Iterate a dataset's batches with ``workers`` background threads.

    Each thread owns a disjoint subset of the shards (like DataLoader worker processes) and
    fills its own bounded queue; batches are taken round-robin from the threads, so the
    order is deterministic. Threads avoid the inter-process copy of every batch; the heavy
    work (LZ4 decompression, numpy gathers) releases the GIL.
    """

    def __init__(self, dataset: ChunkDataset, workers: int = 1, prefetch: int = 4) -> None:
        self.dataset = dataset
        self.workers = max(1, min(workers, len(dataset.shards)))
        self.prefetch = prefetch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        done = object()
        stop = threading.Event()
        queues: list[queue.Queue] = [queue.Queue(self.prefetch) for _ in range(self.workers)]

        def put(worker: int, item: object) -> bool:
            """Hand ``item`` over unless the consumer stopped; False if it did."""
            while not stop.is_set():
                try:
                    queues[worker].put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce(worker: int) -> None:
            try:
                for batch in self.dataset.iterate(worker, self.workers):
                    if not put(worker, batch):
                        return
                put(worker, done)
            except BaseException as exc:  # hand errors to the consumer
                put(worker, exc)

        threads = [threading.Thread(target=produce, args=(i,), daemon=True)
                   for i in range(self.workers)]
        for thread in threads:
            thread.start()
        try:
            active = list(range(self.workers))
            while active:
                for worker in list(active):
                    item = queues[worker].get()
                    if item is done:
                        active.remove(worker)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
        finally:
            stop.set()
            for thread in threads:
                thread.join()


def make_loader(dataset: ChunkDataset, workers: int = 0) -> Iterable[dict[str, torch.Tensor]]:
    """Batches of ``dataset``: in this thread (``workers=0``) or with loader threads."""
    if workers <= 0:
        return dataset.iterate()
    return ThreadLoader(dataset, workers)


MAX_DRAWS = 100  # passes over the data to fill one epoch before giving up


def training_batches(dataset: ChunkDataset, workers: int, steps: int
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly ``steps`` full batches for one training epoch (the epoch set on ``dataset``).

    The number of jets the rejection sampling keeps varies from epoch to epoch, and each
    loader thread drops its last partial batch; a fixed number of steps per epoch makes
    per-batch schedules end exactly where they say. If one sampling pass gives fewer
    batches, the epoch continues with a further, independent pass over the (reshuffled)
    data; surplus batches are not used.
    """
    produced, draw, epoch = 0, 0, dataset.epoch
    try:
        while produced < steps:
            loader = iter(make_loader(dataset, workers))
            try:
                for batch in loader:
                    yield batch
                    produced += 1
                    if produced == steps:
                        return
            finally:
                if hasattr(loader, "close"):  # stop the loader threads
                    loader.close()
            draw += 1
            if produced == 0 and draw >= 2:
                raise DataError(f"the training files hold fewer sampled jets than one batch "
                                f"of {dataset.batch_size}; lower --batch-size")
            if draw >= MAX_DRAWS:
                raise DataError(f"{MAX_DRAWS} sampling passes gave only {produced} of the "
                                f"{steps} batches of an epoch; the expected jets per epoch "
                                "do not match the data (was the dataset changed?)")
            dataset.set_epoch(epoch, draw)
    finally:
        dataset.set_epoch(epoch)
