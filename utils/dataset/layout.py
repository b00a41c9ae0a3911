"""Column layout of exported jet rows: which column holds which feature.

A row is ``[feature groups (candidate-major) | observers | process | truth one-hot | weight]``.
The layout travels in every chunk header, so a chunk file describes itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    @property
    def n_columns(self) -> int:
        return sum(b.width for b in self.blocks)

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
                return slice(start, start + b.width)
            start += b.width
        raise KeyError(f"no column block {name!r}; blocks are {[b.name for b in self.blocks]}")

    def column(self, feature: str, candidate: int = 0) -> int:
        """Index of ``feature`` (of candidate ``candidate`` for candidate groups)."""
        for b in self.blocks:
            if feature in b.features:
                length = b.length or 1
                if not 0 <= candidate < length:
                    raise IndexError(f"candidate {candidate} out of range for block {b.name!r}")
                return self.slice(b.name).start + candidate * len(b.features) + \
                    b.features.index(feature)
        raise KeyError(f"no column for feature {feature!r}")

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
            if b.length is None:
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
