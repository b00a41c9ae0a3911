"""Column layout of exported jet rows: which column holds which feature.

A row is ``[feature groups (candidate-major) | observers | process | truth one-hot | weight]``.
The layout travels in every chunk header, so a chunk file describes itself.

Observers (event numbers, tagger scores, ...) must survive exactly, so each is stored as the
bits of a float64 spread over the row dtype's columns (2 columns in float32 rows, 4 in
float16); :meth:`ColumnLayout.encode_observers` / :meth:`decode_observers` convert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.config import Config

FEATURES, OBSERVERS, PROCESS, TRUTH, WEIGHT = "features", "observers", "process", "truth", "weight"
_KINDS = (FEATURES, OBSERVERS, PROCESS, TRUTH, WEIGHT)


@dataclass(frozen=True)
class Block:
    """A contiguous range of columns: ``length`` candidates x ``features`` (candidate-major)."""

    name: str
    kind: str
    features: tuple[str, ...]
    length: int | None = None

    @property
    def width(self) -> int:
        return len(self.features) * (self.length or 1)

    def observer_columns(self, dtype: str) -> int:
        """Columns per observer (the bytes of a float64 in the row dtype)."""
        return 8 // np.dtype(dtype).itemsize


@dataclass(frozen=True)
class ColumnLayout:
    """Ordered blocks of columns plus the storage dtype."""

    blocks: tuple[Block, ...]
    dtype: str = "float32"

    @classmethod
    def from_config(cls, config: Config) -> ColumnLayout:
        blocks = [Block(g.name, FEATURES, g.features, g.length) for g in config.groups]
        if config.observers:
            blocks.append(Block("observers", OBSERVERS, config.observer_names))
        blocks += [
            Block("process", PROCESS, ("process",)),
            Block("truth", TRUTH, config.truth_labels),
            Block("weight", WEIGHT, ("weight",)),
        ]
        return cls(tuple(blocks), config.storage_dtype)

    # -- lookup ---------------------------------------------------------------------------
    def _width(self, block: Block) -> int:
        if block.kind == OBSERVERS:
            return len(block.features) * block.observer_columns(self.dtype)
        return block.width

    @property
    def n_columns(self) -> int:
        return sum(self._width(b) for b in self.blocks)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no column block {name!r}; blocks are {[b.name for b in self.blocks]}")

    def slice(self, name: str) -> slice:
        """Columns of block ``name``."""
        start = 0
        for b in self.blocks:
            if b.name == name:
                return slice(start, start + self._width(b))
            start += self._width(b)
        raise KeyError(f"no column block {name!r}; blocks are {[b.name for b in self.blocks]}")

    def column(self, feature: str, candidate: int = 0) -> int:
        """Index of ``feature`` (of candidate ``candidate`` for candidate groups)."""
        for b in self.blocks:
            if feature in b.features and b.kind == OBSERVERS:
                raise KeyError(f"{feature!r} is an observer; read it with decode_observers")
            if feature in b.features:
                length = b.length or 1
                if not 0 <= candidate < length:
                    raise IndexError(f"candidate {candidate} out of range for block {b.name!r}")
                return self.slice(b.name).start + candidate * len(b.features) + \
                    b.features.index(feature)
        raise KeyError(f"no column for feature {feature!r}")

    @property
    def observer_names(self) -> tuple[str, ...]:
        return next((b.features for b in self.blocks if b.kind == OBSERVERS), ())

    def encode_observers(self, values: np.ndarray) -> np.ndarray:
        """(rows, observers) float64 -> the (rows, columns) block in the row dtype (bits)."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        per_value = 8 // np.dtype(self.dtype).itemsize  # explicit shape: rows may be 0
        return values.view(self.dtype).reshape(values.shape[0], values.shape[1] * per_value)

    def decode_observers(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Exact float64 observer values from rows (or from their observers block)."""
        if not self.observer_names:
            return {}
        block = rows[:, self.slice("observers")] if rows.shape[1] == self.n_columns else rows
        values = np.ascontiguousarray(block, dtype=self.dtype).view(np.float64)
        return {name: values[:, i] for i, name in enumerate(self.observer_names)}

    @property
    def candidate_blocks(self) -> tuple[Block, ...]:
        """The candidate groups (blocks of ``length`` candidates)."""
        return tuple(b for b in self.blocks if b.length is not None)

    def flat_ranges(self) -> list[tuple[slice, slice]]:
        """``(row columns, flat columns)`` of every run of consecutive per-jet columns. The
        *flat* part of a row is the row without its candidate blocks (what the export
        stages per jet besides the real candidates)."""
        ranges: list[tuple[slice, slice]] = []
        start = flat = 0
        for b in self.blocks:
            width = self._width(b)
            if b.length is None:
                if ranges and ranges[-1][0].stop == start:
                    rows, cols = ranges.pop()
                    ranges.append((slice(rows.start, start + width),
                                   slice(cols.start, flat + width)))
                else:
                    ranges.append((slice(start, start + width), slice(flat, flat + width)))
                flat += width
            start += width
        return ranges

    def flat_slice(self, name: str) -> slice:
        """Columns of the per-jet block ``name`` in the flat part of a row."""
        start = 0
        for b in self.blocks:
            if b.length is None:
                if b.name == name:
                    return slice(start, start + self._width(b))
                start += self._width(b)
        raise KeyError(f"no per-jet column block {name!r}")

    @property
    def n_flat(self) -> int:
        """Columns of the flat part of a row (see :meth:`flat_ranges`)."""
        return sum(self._width(b) for b in self.blocks if b.length is None)

    @property
    def feature_blocks(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.kind == FEATURES)

    @property
    def truth_labels(self) -> tuple[str, ...]:
        return self.block("truth").features

    @property
    def process_column(self) -> int:
        return self.slice("process").start

    @property
    def weight_column(self) -> int:
        return self.slice("weight").start

    def column_names(self) -> list[str]:
        """One name per column, e.g. ``cpf[3].Cpfcan_ptrel``."""
        names: list[str] = []
        for b in self.blocks:
            if b.kind == OBSERVERS:
                k = b.observer_columns(self.dtype)
                names += [f"{f}.bits{i}" for f in b.features for i in range(k)]
            elif b.length is None:
                names += list(b.features)
            else:
                names += [f"{b.name}[{i}].{f}" for i in range(b.length) for f in b.features]
        return names

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "blocks": [
                {"name": b.name, "kind": b.kind, "features": list(b.features), "length": b.length}
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnLayout:
        blocks = []
        for raw in data["blocks"]:
            if raw["kind"] not in _KINDS:
                raise ValueError(f"unknown block kind {raw['kind']!r}")
            blocks.append(Block(raw["name"], raw["kind"], tuple(raw["features"]), raw["length"]))
        return cls(tuple(blocks), data["dtype"])
