"""Synthetic flat jet ntuples matching a configuration (for tests, benchmarks, new configs).

The values are random, not physics: use the Pythia8 generator (utils/generation) for
physics samples. These files exercise every branch a config reads, with jets outside the
pT/eta window, jets without a truth label and optional NaNs, so the export can be checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from utils.config import Config
from utils.io import atomic_path


def synthetic_arrays(config: Config, n_jets: int, seed: int = 0, nan_fraction: float = 0.0,
                     unlabelled_fraction: float = 0.05) -> dict[str, ak.Array | np.ndarray]:
    """Random per-jet arrays for every branch ``config`` reads (candidate groups jagged)."""
    rng = np.random.default_rng(seed)
    out: dict[str, ak.Array | np.ndarray] = {}
    pt = (config.pt_bins[0] * 0.8 + rng.exponential(80.0, n_jets)).astype(np.float32)
    eta = rng.uniform(config.eta_bins[0] - 0.3, config.eta_bins[-1] + 0.3, n_jets)
    for group in config.groups:
        if group.is_candidates:
            counts = rng.poisson(group.length * 0.6, n_jets)
            total = int(counts.sum())
            for name in group.branches:
                values = rng.normal(1.0, 2.0, total).astype(np.float32)
                out[name] = ak.unflatten(values, counts)
        else:
            for name in group.branches:
                out[name] = rng.normal(5.0, 3.0, n_jets).astype(np.float32)
    out[config.pt_key] = pt
    out[config.eta_key] = eta.astype(np.float32)
    labels = config.truth_labels
    flags = rng.integers(0, len(labels), n_jets)
    unlabelled = rng.random(n_jets) < unlabelled_fraction
    for i, truth in enumerate(config.truths):
        if isinstance(truth, str):
            out[truth] = ((flags == i) & ~unlabelled).astype(np.int32)
    for name in (o for o in config.observers if isinstance(o, str)):
        out.setdefault(name, rng.normal(0.0, 1.0, n_jets).astype(np.float32))
    if nan_fraction > 0:
        bad = rng.random(n_jets) < nan_fraction
        name = config.groups[0].branches[-1]
        values = np.array(out[name], dtype=np.float32)
        values[bad] = np.nan
        out[name] = values
    return out


def write_ntuple(path: str | Path, tree_name: str,
                 arrays: Mapping[str, ak.Array | np.ndarray],
                 basket_entries: int | None = None) -> Path:
    """Write a flat TTree (one entry per jet); jagged branches get one counter per length.

    ``basket_entries``: entries per basket (and cluster), as CMS ntuples have them (a few
    thousand); default one basket per branch."""
    path = Path(path)
    flat = {k: np.asarray(v) for k, v in arrays.items() if not _is_jagged(v)}
    jagged = {k: v for k, v in arrays.items() if _is_jagged(v)}
    # group jagged branches that share their counts so they get one counter branch each
    groups: dict[bytes, dict[str, ak.Array]] = {}
    for name, values in jagged.items():
        key = np.asarray(ak.num(values)).tobytes()
        groups.setdefault(key, {})[name] = values
    branches: dict[str, object] = dict(flat)
    for i, members in enumerate(groups.values()):
        branches[f"group{i}"] = ak.zip(members)
    with atomic_path(path) as tmp, uproot.recreate(tmp, compression=uproot.LZ4(1)) as f:
        tree = f.mktree(
            tree_name,
            {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in branches.items()},
            counter_name=lambda counted: f"n_{counted}",
            field_name=lambda outer, inner: inner,
        )
        n = len(next(iter(branches.values())))
        step = basket_entries or max(n, 1)
        for start in range(0, max(n, 1), step):
            tree.extend({k: v[start:start + step] for k, v in branches.items()})
    return path


def write_synthetic_ntuple(path: str | Path, config: Config, n_jets: int, seed: int = 0,
                           basket_entries: int | None = None, **options: float) -> Path:
    """Write a synthetic ntuple for ``config`` (see :func:`synthetic_arrays` for options,
    :func:`write_ntuple` for ``basket_entries``)."""
    return write_ntuple(path, config.tree_name, synthetic_arrays(config, n_jets, seed, **options),
                        basket_entries)


def _is_jagged(values: object) -> bool:
    return isinstance(values, ak.Array) and values.ndim > 1
