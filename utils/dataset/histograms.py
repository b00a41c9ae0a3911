"""Histograms of every input feature of an exported dataset, per process and truth label.

Binning, fixed per feature from the first ``binning_jets`` jets (the export shuffles its
chunks, so these are a random sample of the dataset):

* continuous features: ``n_bins`` equal bins between the 0.5 % and 99.5 % quantiles; the
  last bin includes its upper edge (as ``numpy.histogram``), so a spike at the upper
  quantile (e.g. PUPPI weights of 1) stays in range. If the quantiles coincide (a spike
  holding > 99 % of the values) the sample's minimum and maximum are used instead;
* integer-valued features (every sampled value is an integer): bins of integer width
  centred on the integers (edges at k +- 0.5), at most ``n_bins`` of them; unit bins over
  the full sampled range if it has at most ``n_bins`` values, else the quantile range;
* constant features: one bin of width 1 centred on the value.

Every histogram has an underflow (index 0) and an overflow (index -1) bin, so nothing is
lost: the entries of a feature sum to the number of jets (per-jet features) or of real
candidates (candidate groups; padding slots, all-zero across the candidate's features, are
excluded). Each candidate group also gets a ``<group>_multiplicity`` histogram (real
candidates per jet).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.dataset.chunk_format import read_chunk
from utils.dataset.layout import ColumnLayout
from utils.io import save_npz

N_BINS = 50
QUANTILES = (0.005, 0.995)
BINNING_JETS = 100_000
FORMAT_VERSION = 1


@dataclass(eq=False)
class FeatureHistogram:
    """Counts of one feature: ``(n_processes, n_labels, n_bins + 2)``, underflow first and
    overflow last."""

    name: str
    group: str
    edges: np.ndarray
    counts: np.ndarray
    integer: bool
    per_candidate: bool  # entries are real candidates (else jets)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def fill(self, values: np.ndarray, category: np.ndarray) -> None:
        """Add ``values`` with their flat (process, label) ``category`` indices."""
        index = np.searchsorted(self.edges, values, side="right")
        index[values == self.edges[-1]] = self.n_bins  # last bin includes its upper edge
        width = self.n_bins + 2
        flat = category * width + index
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)


@dataclass(eq=False)
class FeatureHistograms:
    """All feature histograms of a dataset plus the jet counts per (process, label)."""

    processes: tuple[str, ...]
    labels: tuple[str, ...]
    histograms: dict[str, FeatureHistogram]
    n_jets: np.ndarray  # (n_processes, n_labels)

    def classes(self, classes: Mapping[str, Sequence[str]] | None = None
                ) -> dict[str, list[int]]:
        """Label indices per class (default: one class per truth label)."""
        if classes is None:
            return {label: [i] for i, label in enumerate(self.labels)}
        unknown = sorted({m for members in classes.values() for m in members} -
                         set(self.labels))
        if unknown:
            raise KeyError(f"classes name unknown truth labels {unknown}; labels are "
                           f"{list(self.labels)}")
        return {name: [self.labels.index(m) for m in members]
                for name, members in classes.items()}

    def counts_by_class(self, name: str, classes: Mapping[str, Sequence[str]] | None = None
                        ) -> dict[str, np.ndarray]:
        """Counts of feature ``name`` summed over the labels of each class:
        ``{class: (n_processes, n_bins + 2)}``."""
        if name not in self.histograms:
            raise KeyError(f"no histogram {name!r}; features are {list(self.histograms)}")
        counts = self.histograms[name].counts
        return {c: counts[:, idx].sum(axis=1) for c, idx in self.classes(classes).items()}

    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (counts + JSON metadata: names, edges, processes, labels)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format_version": FORMAT_VERSION,
            "processes": list(self.processes),
            "labels": list(self.labels),
            "histograms": [{"name": h.name, "group": h.group, "integer": h.integer,
                            "per_candidate": h.per_candidate, "edges": h.edges.tolist()}
                           for h in self.histograms.values()],
        }
        arrays = {f"counts__{h.name}": h.counts for h in self.histograms.values()}
        return save_npz(path, compressed=True, metadata=np.array(json.dumps(metadata)),
                        n_jets=self.n_jets, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> FeatureHistograms:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            metadata = json.loads(str(data["metadata"]))
            if metadata.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported histogram format version "
                                 f"{metadata.get('format_version')!r}")
            histograms = {
                h["name"]: FeatureHistogram(h["name"], h["group"],
                                            np.asarray(h["edges"], dtype=np.float64),
                                            data[f"counts__{h['name']}"], h["integer"],
                                            h["per_candidate"])
                for h in metadata["histograms"]
            }
            return cls(tuple(metadata["processes"]), tuple(metadata["labels"]), histograms,
                       data["n_jets"])


def feature_edges(values: np.ndarray, n_bins: int = N_BINS,
                  quantiles: tuple[float, float] = QUANTILES) -> tuple[np.ndarray, bool]:
    """Bin edges for a sample of one feature and whether it is integer-valued (module doc)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):  # nothing to learn from (e.g. a group without real candidates)
        return np.array([-0.5, 0.5]), True
    low, high = np.quantile(values, quantiles)
    if high <= low:
        low, high = values.min(), values.max()
    integer = bool(np.all(values == np.round(values)))
    if integer:
        low, high = math.floor(low), math.ceil(high)
        if values.max() - values.min() < n_bins:  # the full range fits in unit bins
            low, high = int(values.min()), int(values.max())
        width = max(1, math.ceil((high - low + 1) / n_bins))
        count = math.ceil((high - low + 1) / width)
        return low - 0.5 + width * np.arange(count + 1, dtype=np.float64), True
    if high <= low:
        return np.array([low - 0.5, low + 0.5]), False
    return np.linspace(low, high, n_bins + 1), False


def histogram_dataset(files: Iterable[str | Path], max_jets: int | None = None,
                      process_names: Sequence[str] | None = None, n_bins: int = N_BINS,
                      binning_jets: int = BINNING_JETS,
                      progress: Callable[[int], None] | None = None) -> FeatureHistograms:
    """Histogram every input feature of the chunk ``files`` (module doc), per process and
    truth label. ``process_names`` names the process indices of the rows (config order;
    default ``process_<i>``); ``max_jets`` limits the jets read (in file order);
    ``progress`` is called with the number of jets of each chunk read."""
    if max_jets is not None and max_jets < 1:
        raise ValueError(f"max_jets must be >= 1, got {max_jets}")
    filler: _Filler | None = None
    pending: list[np.ndarray] = []
    layout: ColumnLayout | None = None
    seen = 0
    for path in files:
        rows, file_layout = read_chunk(path)
        if layout is None:
            layout = file_layout
        elif file_layout != layout:
            raise ValueError(f"{path}: column layout differs from the first file's")
        if max_jets is not None:
            rows = rows[:max_jets - seen]
        seen += len(rows)
        if filler is None:
            pending.append(rows)
            if sum(map(len, pending)) >= binning_jets:
                filler = _Filler.from_sample(layout, pending, n_bins, process_names)
                pending = []
        else:
            filler.fill(rows)
        if progress is not None:
            progress(len(rows))
        if max_jets is not None and seen >= max_jets:
            break
    if layout is None:
        raise ValueError("no chunk files to histogram")
    if filler is None:
        if not sum(map(len, pending)):
            raise ValueError("the chunk files hold no jets")
        filler = _Filler.from_sample(layout, pending, n_bins, process_names)
    return filler.result()


def _jet_categories(rows: np.ndarray, layout: ColumnLayout) -> tuple[np.ndarray, np.ndarray]:
    """Process index and truth-label index of every row."""
    process = rows[:, layout.process_column].astype(np.int64)
    truth = rows[:, layout.slice("truth")]
    if not np.all(truth.sum(axis=1) == 1):
        raise ValueError("rows without a one-hot truth label; is this an exported dataset?")
    return process, truth.argmax(axis=1)


def _candidates(rows: np.ndarray, layout: ColumnLayout, block_name: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(values (n, length, n_features), real (n, length))`` of a candidate group."""
    block = layout.block(block_name)
    values = rows[:, layout.slice(block_name)].reshape(len(rows), block.length,
                                                        len(block.features))
    return values, np.any(values != 0, axis=2)


class _Filler:
    """Fills the histograms chunk by chunk once the binning is fixed."""

    def __init__(self, layout: ColumnLayout, histograms: dict[str, FeatureHistogram],
                 processes: Sequence[str], fixed_processes: bool) -> None:
        self.layout = layout
        self.histograms = histograms
        self.processes = list(processes)
        self.fixed_processes = fixed_processes
        self.n_jets = np.zeros((len(self.processes), len(layout.truth_labels)), dtype=np.int64)

    @classmethod
    def from_sample(cls, layout: ColumnLayout, sample: list[np.ndarray], n_bins: int,
                    process_names: Sequence[str] | None) -> _Filler:
        """Fix the binning from ``sample`` (row arrays), then fill them."""
        rows = np.concatenate(sample)
        process, _ = _jet_categories(rows, layout)
        processes = list(process_names) if process_names is not None else \
            [f"process_{i}" for i in range(max(int(process.max()), 0) + 1)]
        shape = (len(processes), len(layout.truth_labels))
        histograms: dict[str, FeatureHistogram] = {}

        def add(name: str, group: str, edges: np.ndarray, integer: bool,
                per_candidate: bool) -> None:
            if name in histograms:
                raise ValueError(f"two histograms named {name!r} (group {group!r})")
            histograms[name] = FeatureHistogram(name, group, edges,
                                                np.zeros((*shape, len(edges) + 1), np.int64),
                                                integer, per_candidate)

        for block in layout.feature_blocks:
            if block.length is None:
                per_feature = list(rows[:, layout.slice(block.name)].T)
            else:
                values, real = _candidates(rows, layout, block.name)
                per_feature = list(values[real].T)
                add(f"{block.name}_multiplicity", block.name,
                    np.arange(block.length + 2) - 0.5, True, per_candidate=False)
            for feature, sample_values in zip(block.features, per_feature, strict=True):
                edges, integer = feature_edges(sample_values, n_bins)
                add(feature, block.name, edges, integer, per_candidate=block.length is not None)
        filler = cls(layout, histograms, processes, process_names is not None)
        filler.fill(rows)
        return filler

    def fill(self, rows: np.ndarray) -> None:
        """Add the jets of ``rows`` (one chunk) to every histogram."""
        if not len(rows):
            return
        process, label = _jet_categories(rows, self.layout)
        if process.min() < 0:
            raise ValueError(f"negative process index {process.min()} in the rows")
        self._grow(int(process.max()) + 1)
        category = process * len(self.layout.truth_labels) + label
        self.n_jets += np.bincount(category, minlength=self.n_jets.size).reshape(
            self.n_jets.shape)
        for block in self.layout.feature_blocks:
            if block.length is None:
                columns = rows[:, self.layout.slice(block.name)]
                for j, feature in enumerate(block.features):
                    self.histograms[feature].fill(columns[:, j].astype(np.float64), category)
                continue
            values, real = _candidates(rows, self.layout, block.name)
            self.histograms[f"{block.name}_multiplicity"].fill(
                real.sum(axis=1).astype(np.float64), category)
            real_values = values[real].astype(np.float64)
            real_category = np.broadcast_to(category[:, None], real.shape)[real]
            for j, feature in enumerate(block.features):
                self.histograms[feature].fill(real_values[:, j], real_category)

    def _grow(self, n_processes: int) -> None:
        """Add zero counts for process indices first seen after the binning sample."""
        extra = n_processes - len(self.processes)
        if extra <= 0:
            return
        if self.fixed_processes:
            raise ValueError(f"rows hold process index {n_processes - 1} but only "
                             f"{len(self.processes)} process names were given: "
                             f"{self.processes}")
        self.processes += [f"process_{i}" for i in range(len(self.processes), n_processes)]
        self.n_jets = np.pad(self.n_jets, ((0, extra), (0, 0)))
        for h in self.histograms.values():
            h.counts = np.pad(h.counts, ((0, extra), (0, 0), (0, 0)))

    def result(self) -> FeatureHistograms:
        return FeatureHistograms(tuple(self.processes), self.layout.truth_labels,
                                 self.histograms, self.n_jets)
