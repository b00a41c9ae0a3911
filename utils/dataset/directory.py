"""The exported-dataset directory: its file names, readers, completeness and inputs record.

A dataset directory (written by :mod:`utils.dataset.export`) holds::

    file_0.lz4 ... file_<K-1>.lz4   the chunks
    processed_files.txt             the chunks, one path per line (written last: "published")
    histogram.npy                   jets per truth label in (pT, eta) bins
    weights.json                    per chunk: name, rows, weight sum, size in bytes
    dataset_info.json               counts, inputs, layout, timing
    feature_scales.json             per-feature spreads, the unit of attack magnitudes
    parameters.json                 the task's parameters and the inputs record

This module is the only one that knows these names and formats; everything else asks a
:class:`DatasetDirectory`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.dataset.chunk_format import MAGIC, ChunkFormatError, read_header
from utils.errors import BHiveError
from utils.io import save_npy, write_json, write_text

PROCESSED_FILES = "processed_files.txt"
HISTOGRAM = "histogram.npy"
WEIGHTS = "weights.json"
INFO = "dataset_info.json"
SCALES = "feature_scales.json"
CHUNK_GLOB = "file_*.lz4"
MAX_LISTED = 10


def chunk_name(index: int) -> str:
    return f"file_{index}.lz4"


class IncompleteDatasetError(BHiveError, FileNotFoundError):
    """A published dataset lacks chunk files or has unreadable ones."""


@dataclass(frozen=True)
class Chunk:
    """One chunk file of a dataset with its bookkeeping from ``weights.json``."""

    path: Path
    rows: int
    sum_weight: float
    size: int | None = None  # bytes (None for datasets written before sizes were recorded)


class DatasetDirectory:
    """Read access to an exported dataset directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"DatasetDirectory({str(self.path)!r})"

    # -- state -----------------------------------------------------------------------------
    @property
    def published(self) -> bool:
        """True once the export finished (``processed_files.txt`` is written last)."""
        return (self.path / PROCESSED_FILES).is_file()

    def problems(self, required: Iterable[str] = ()) -> list[str]:
        """What is wrong with a published dataset: missing, truncated or unreadable chunks
        and missing bookkeeping files or ``required`` files (empty if complete)."""
        problems = [f"{self.path / name} is missing"
                    for name in (WEIGHTS, INFO, HISTOGRAM, *required)
                    if not (self.path / name).is_file()]
        try:
            chunks = self.chunks()
        except (OSError, ValueError, KeyError) as exc:
            return problems + [str(exc)]
        for chunk in chunks:
            if not chunk.path.is_file():
                problems.append(f"{chunk.path} is missing")
                continue
            if chunk.size is not None and chunk.path.stat().st_size != chunk.size:
                problems.append(f"{chunk.path} has {chunk.path.stat().st_size} bytes, "
                                f"{chunk.size} were written (truncated or replaced)")
                continue
            try:
                shape, _ = read_header(chunk.path)
            except ChunkFormatError as exc:
                problems.append(str(exc))
                continue
            if shape[0] != chunk.rows:
                problems.append(f"{chunk.path} holds {shape[0]} jets, {chunk.rows} were "
                                "written")
        return problems

    def check(self, required: Iterable[str] = ()) -> None:
        """Raise :class:`IncompleteDatasetError` unless the dataset is published and whole
        (with the ``required`` files, e.g. the task's parameters.json)."""
        if not self.published:
            raise IncompleteDatasetError(f"{self.path / PROCESSED_FILES} does not exist: the "
                                         "dataset was not exported (run "
                                         "DatasetConstructorTask first)")
        if self.is_original():
            raise IncompleteDatasetError(
                f"{self.path} holds a dataset of the original b-hive, not one of this "
                "framework: import it into another dataset version (--dataset-version <new> "
                f"--legacy-dataset {self.path}); do not remove it")
        problems = self.problems(required)
        if problems:
            shown = problems[:MAX_LISTED]
            more = len(problems) - len(shown)
            raise IncompleteDatasetError(
                f"the dataset in {self.path} is incomplete ({len(problems)} problem(s)):\n  "
                + "\n  ".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nIt is not rebuilt automatically (that could silently change the data): "
                "delete it with --remove-output 0,a on the DatasetConstructorTask command, or "
                "export into a new --dataset-version")

    def is_original(self) -> bool:
        """True for a published directory of the original b-hive (header-less chunks, no
        ``dataset_info.json``)."""
        if (self.path / INFO).is_file() or not self.published:
            return False
        try:
            first = next(iter(self.files()), None)
            with open(first, "rb") as f:  # type: ignore[arg-type]
                return f.read(len(MAGIC)) != MAGIC
        except (OSError, TypeError):
            return False

    # -- contents --------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """The chunk files, in order (a listed path that no longer exists is looked up by
        name in this directory, so a dataset can be moved with its directory)."""
        listing = self.path / PROCESSED_FILES
        if not listing.is_file():
            raise IncompleteDatasetError(f"{listing} does not exist; run "
                                         "DatasetConstructorTask first")
        files = []
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            path = Path(line.strip())
            if not path.exists() and (self.path / path.name).exists():
                path = self.path / path.name
            files.append(path)
        return files

    def weights(self) -> dict[str, Any]:
        return json.loads((self.path / WEIGHTS).read_text())

    def info(self) -> dict[str, Any]:
        return json.loads((self.path / INFO).read_text())

    def histogram(self) -> np.ndarray:
        return np.load(self.path / HISTOGRAM)

    def feature_scales(self) -> dict[str, Any] | None:
        """The stored per-feature scales (:mod:`utils.dataset.scales`); None for datasets
        exported before they were stored."""
        path = self.path / SCALES
        return json.loads(path.read_text()) if path.is_file() else None

    def chunks(self) -> list[Chunk]:
        """Every chunk with rows, weight sum and size (from ``weights.json``; a chunk it does
        not list is described from its header)."""
        files = self.files()
        meta = self.weights() if (self.path / WEIGHTS).is_file() else {}
        names = meta.get("files", [])
        sizes = meta.get("bytes") or [None] * len(names)
        by_name = {name: (rows, weight, size) for name, rows, weight, size in zip(
            names, meta.get("rows", []), meta.get("sum_weight", []), sizes, strict=True)}
        out = []
        for path in files:
            if path.name in by_name:
                rows, weight, size = by_name[path.name]
            else:
                rows = read_header(path)[0][0]
                weight, size = float(rows), None
            out.append(Chunk(path, int(rows), float(weight), size))
        return out

    @property
    def n_jets(self) -> int:
        return sum(c.rows for c in self.chunks())


def dataset_info(config: Any, layout: Any, histogram: np.ndarray, seconds: float,
                 timing: Mapping[str, float], **fields: Any) -> dict[str, Any]:
    """The ``dataset_info.json`` record of an export or an import: the config's name and
    fingerprint, ``fields`` (what the producer adds, in its order), the jets per truth
    label, the column ``layout`` and the time per stage."""
    return {
        "config": config.name,
        "config_fingerprint": config.fingerprint(),
        **fields,
        "jets_per_label": dict(zip(config.truth_labels,
                                   histogram.sum(axis=(1, 2)).astype(int).tolist(), strict=True)),
        "layout": layout.to_dict(),
        "seconds": round(seconds, 3),
        "timing": {k: round(v, 3) for k, v in timing.items()},
    }


def write_bookkeeping(work_dir: Path, final_dir: Path, chunks: Sequence[Chunk],
                      histogram: np.ndarray, info: Mapping[str, Any], chunk_size: int,
                      scales: Mapping[str, Any]) -> None:
    """Write ``histogram.npy``, ``weights.json``, ``dataset_info.json``,
    ``feature_scales.json`` and (last) ``processed_files.txt`` into ``work_dir``, naming the
    chunks by their place in ``final_dir`` (where the work directory is published)."""
    save_npy(work_dir / HISTOGRAM, histogram)
    write_json(work_dir / SCALES, dict(scales))
    write_json(work_dir / WEIGHTS, {
        "files": [c.path.name for c in chunks],
        "rows": [c.rows for c in chunks],
        "sum_weight": [c.sum_weight for c in chunks],
        "bytes": [c.size for c in chunks],
        "total_rows": int(sum(c.rows for c in chunks)),
        "total_weight": float(sum(c.sum_weight for c in chunks)),
        "chunk_size": chunk_size,
    })
    write_json(work_dir / INFO, dict(info))
    write_text(work_dir / PROCESSED_FILES,
               "".join(f"{final_dir / c.path.name}\n" for c in chunks))


# -- inputs record ---------------------------------------------------------------------------
def inputs_record(files: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{path: {"size": bytes, "mtime": seconds}}`` of the input files (remote URLs: ``{}``),
    recorded in a dataset's parameters.json to recognise a different or changed input."""
    from utils.dataset.inputs import is_remote

    record: dict[str, dict[str, Any]] = {}
    for name in files:
        if is_remote(name):
            record[name] = {}
            continue
        stat = Path(name).stat()
        record[name] = {"size": stat.st_size, "mtime": round(stat.st_mtime, 3)}
    return record


def inputs_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """A short description of how two inputs records differ ('' if they are equal)."""
    added = [f for f in new if f not in old]
    removed = [f for f in old if f not in new]
    changed = [f for f in new if f in old and old[f] != new[f]]
    parts = []
    for label, names in (("not in the recorded inputs", added),
                         ("recorded but not given now", removed),
                         ("changed since (size or modification time)", changed)):
        if names:
            shown = ", ".join(names[:3]) + (f", ... ({len(names) - 3} more)"
                                            if len(names) > 3 else "")
            parts.append(f"{len(names)} file(s) {label}: {shown}")
    return "; ".join(parts)
