"""Per-feature scales of an exported dataset: the unit of ``--attack-magnitude``.

The scale of a feature is a robust spread of its values over the real entries (padding
candidates and the config's ``default_values`` left out): half the distance between the
16th and 84th percentiles (the standard deviation of a Gaussian, insensitive to tails). A
feature whose real entries are mostly 0 (e.g. an impact parameter of tracks without hits)
gets the spread of its other values; a constant feature gets 0 (attacks leave it alone).
The export computes the scales from the first ``SAMPLE_JETS`` rows (uniformly shuffled, so
a random sample; at most ``SAMPLE_ENTRIES`` entries per feature) while the merge writes
the later files, and stores them as ``feature_scales.json`` with the dataset;
:func:`dataset_scales` reads them, or computes them from the chunks of a dataset exported
before they were stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.dataset.chunk_format import read_chunk
from utils.dataset.layout import ColumnLayout

SAMPLE_JETS = 100_000  # jets the scales are computed from
SAMPLE_ENTRIES = 200_000  # at most this many (real) entries per feature
QUANTILES = (16.0, 84.0)
METHOD = ("half the 16-84 percentile range over the real (non-padding) entries of the first "
          f"{SAMPLE_JETS} jets (at most {SAMPLE_ENTRIES} per feature) that are not at a "
          "declared default value; over the non-zero ones where that is 0; 0 for constant "
          "features")


def robust_spread(values: np.ndarray) -> float:
    """Half the 16-84 percentile range of ``values`` (0 if there are none)."""
    if values.size == 0:
        return 0.0
    low, high = np.percentile(values, QUANTILES)
    return float(high - low) / 2


ENTRY_BLOCK = 8192  # jets scanned at a time for real candidates (stops once enough)


def sample_entries(block: np.ndarray, length: int | None) -> np.ndarray:
    """The entries the scales of one group use, from its columns ``(jets, length *
    features)`` (candidate-major; ``length`` None for per-jet groups): the real candidates
    (not all-zero padding) in jet order, at most ``SAMPLE_ENTRIES``, as a (entries,
    features) copy in the stored dtype. Scans the jets block by block and stops once it has
    enough (the first jets of a big sample hold them)."""
    n_features = block.shape[1] // (length or 1)
    if not length:
        return block[:SAMPLE_ENTRIES].copy()
    parts, taken = [], 0
    for start in range(0, len(block), ENTRY_BLOCK):
        values = block[start:start + ENTRY_BLOCK].reshape(-1, length, n_features)
        parts.append(values[(values != 0).any(axis=2)])
        taken += len(parts[-1])
        if taken >= SAMPLE_ENTRIES:
            break
    if not parts:
        return np.empty((0, n_features), dtype=block.dtype)
    return np.concatenate(parts)[:SAMPLE_ENTRIES]


def entry_scales(entries: np.ndarray, defaults: Sequence[float | None] = ()) -> list[float]:
    """Scales of the features (columns) of ``entries`` (see :func:`sample_entries`);
    entries equal to a feature's default (``defaults[i]``, None: none declared) are left
    out."""
    scales = []
    for i in range(entries.shape[1]):
        column = entries[:, i].astype(np.float64)  # exact: float64 only column by column
        default = defaults[i] if i < len(defaults) else None
        if default is not None:
            column = column[column != np.float32(default)]
        spread = robust_spread(column)
        if spread == 0:
            spread = robust_spread(column[column != 0])
        scales.append(spread)
    return scales


def group_scales(block: np.ndarray, length: int | None,
                 defaults: Sequence[float | None] = ()) -> list[float]:
    """Scales of the features of one group from its columns ``(jets, length * features)``
    (candidate-major; ``length`` None for per-jet groups); entries equal to a feature's
    default (``defaults[i]``, None: none declared) are left out."""
    return entry_scales(sample_entries(block, length), defaults)


def row_entries(rows: np.ndarray, layout: ColumnLayout) -> tuple[int, dict[str, np.ndarray]]:
    """``(jets, {group: entries})`` of consecutive dataset ``rows``: what
    :func:`scales_of_entries` needs of them (small copies; ``rows`` may be reused after)."""
    return len(rows), {block.name: sample_entries(rows[:, layout.slice(block.name)],
                                                  block.length)
                       for block in layout.feature_blocks}


def scales_of_entries(parts: Sequence[tuple[int, Mapping[str, np.ndarray]]],
                      layout: ColumnLayout,
                      defaults: Mapping[str, Mapping[str, float]] | None = None
                      ) -> dict[str, Any]:
    """The scales (as :func:`compute_scales`) from the :func:`row_entries` of consecutive
    pieces of the dataset's first rows, in order (the same as from the rows at once)."""
    groups = {}
    for block in layout.feature_blocks:
        declared = (defaults or {}).get(block.name, {})
        pieces = [entries[block.name] for _, entries in parts]
        entries = np.concatenate(pieces)[:SAMPLE_ENTRIES] if pieces else \
            np.empty((0, len(block.features)), dtype=layout.dtype)
        scales = entry_scales(entries, [declared.get(f) for f in block.features])
        groups[block.name] = dict(zip(block.features, scales, strict=True))
    return {"groups": groups, "jets": int(sum(n for n, _ in parts)), "method": METHOD}


def compute_scales(files: Iterable[str | Path], defaults: Mapping[str, Mapping[str, float]]
                   | None = None, sample: int = SAMPLE_JETS) -> dict[str, Any]:
    """``{"groups": {group: {feature: scale}}, "jets": n, "method": ...}`` from the first
    ``sample`` jets of the chunk ``files``, leaving out entries at the ``defaults``
    (``{group: {feature: value}}``, the config's ``default_values``)."""
    parts: list[tuple[int, dict[str, np.ndarray]]] = []
    layout: ColumnLayout | None = None
    taken = 0
    for path in files:
        rows, layout = read_chunk(path)
        parts.append(row_entries(rows[:sample - taken], layout))
        taken += parts[-1][0]
        if taken >= sample:
            break
    if layout is None:
        return {"groups": {}, "jets": 0, "method": METHOD}
    return scales_of_entries(parts, layout, defaults)


def config_defaults(config: Any) -> dict[str, dict[str, float]]:
    """``{group: {feature: default value}}`` declared by ``config``."""
    return {g.name: dict(g.default_values) for g in config.groups}


def dataset_scales(directory: str | Path, config: Any = None) -> dict[str, dict[str, float]]:
    """``{group: {feature: scale}}`` of an exported dataset: the stored scales, else (a
    dataset exported before they were stored) computed from its chunks (leaving out the
    default values ``config`` declares)."""
    from utils.dataset.directory import DatasetDirectory

    dataset = DatasetDirectory(directory)
    stored = dataset.feature_scales()
    if stored is None:
        stored = compute_scales(dataset.files(),
                                config_defaults(config) if config is not None else None)
    return stored["groups"]
