"""Pileup overlay: a pool of minimum-bias events, vertices along z, CHS and PUPPI-like weights.

The model (all numbers documented in README.md, "Built-in samples"):

- A pool of ``POOL_EVENTS`` Pythia8 non-diffractive minimum-bias events (with MPI and the
  detector model's decays) is generated once per sample version and reused; it keeps the
  visible final-state particles with |eta| < ``POOL_ABS_ETA_MAX``.
- Each hard-scatter event gets Poisson(``mu``) pool events, each rotated by a random azimuth
  and mirrored in z with probability 1/2, placed at a vertex displaced along z from the
  hard-scatter vertex (the origin) by N(0, sqrt(2) * ``LUMINOUS_SIGMA_Z_CM``): both vertices
  are drawn from the luminous region.
- Charged-hadron subtraction: a pileup vertex closer than ``PV_MERGE_DZ_CM`` to the hard
  scatter is not resolved, its tracks are PV tracks; of a resolved vertex, the tracks used in
  its fit (probability ``PU_TRACK_IN_FIT``) are removed, the others are associated to the
  hard-scatter vertex by dz if it lies within ``DZ_COMPATIBLE_CM`` and removed otherwise.
- ``npv``: the hard-scatter vertex plus the resolved pileup vertices with at least
  ``VERTEX_MIN_TRACKS`` charged particles with pT > ``VERTEX_TRACK_PT_MIN`` in |eta| < 2.5.
- PUPPI-like neutral weights: alpha_i = log sum_j (pT_j / dR_ij)^2 over the jet's tracks
  with ``PUPPI_DR_MIN`` < dR < ``PUPPI_DR_MAX``; w_i = F_chi2(1 dof) of
  (alpha_i - median)^2 / RMS^2 above the median, 0 below it; median and RMS of alpha at
  random points of the events against all their tracks (PUPPI calibrates on the pileup
  charged particles, spread over the detector; here per batch of events).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.special import erf

from utils.io import atomic_path

from .detector import MM_TO_CM, NEUTRINO_IDS, TRACKER_ABS_ETA_MAX
from .generator import SEED_MAX, EventGenerator, ParticleBatch
from .kinematics import delta_r, offsets_from_counts, pt_eta_phi, segment_sum

POOL_EVENTS = 2000  # per sample version
POOL_MIN_EVENTS = 200
POOL_ABS_ETA_MAX = 3.0  # anti-kT R = 0.4 jets with |eta| < 2.5 reach |eta| 2.9
POOL_FORMAT = 1
POOL_SALT = 0x9E37  # keeps pool seeds apart from the file seeds
LUMINOUS_SIGMA_Z_CM = 3.5  # Run 3 luminous region
PV_MERGE_DZ_CM = 0.1
PU_TRACK_IN_FIT = 0.8
DZ_COMPATIBLE_CM = 0.3
VERTEX_MIN_TRACKS, VERTEX_TRACK_PT_MIN = 2, 0.4  # GeV
PUPPI_DR_MIN, PUPPI_DR_MAX = 0.01, 0.4
PUPPI_PROBES = 20  # random points per event for the pileup alpha distribution
PUPPI_RMS_MIN = 0.1


@dataclass(frozen=True)
class MinBiasPool:
    """Visible final-state particles of the pool events (GeV, production vertices in mm)."""

    offsets: np.ndarray  # first particle of each event, length n_events + 1
    vertex_tracks: np.ndarray  # per event: charged particles with pT > 0.4 GeV, |eta| < 2.5
    pid: np.ndarray
    charge: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vz: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1

    def save(self, path: str | os.PathLike) -> None:
        """Write the pool atomically (numpy .npz)."""
        with atomic_path(Path(path)) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, format=np.int64(POOL_FORMAT),
                     **{f.name: getattr(self, f.name) for f in fields(self)})

    @staticmethod
    def load(path: str | os.PathLike) -> MinBiasPool:
        """Read a pool written by :meth:`save`; a damaged or foreign file raises ValueError."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {f.name: data[f.name] for f in fields(MinBiasPool)}
                version = int(data["format"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a readable pileup pool ({error}); delete it to "
                             "have it generated again") from error
        if version != POOL_FORMAT:
            raise ValueError(f"{path}: pileup pool format {version}, expected {POOL_FORMAT}; "
                             "delete it to have it generated again")
        pool = MinBiasPool(**arrays)
        n = len(pool.pid)
        if (pool.offsets[0] != 0 or pool.offsets[-1] != n or np.any(np.diff(pool.offsets) < 0)
                or any(len(getattr(pool, f.name)) != n for f in fields(pool)[2:])
                or len(pool.vertex_tracks) != pool.n_events or pool.n_events < 1):
            raise ValueError(f"{path}: inconsistent pileup pool; delete it to have it "
                             "generated again")
        return pool


def pool_seed(*entropy: int) -> int:
    """Pythia seed of a pileup pool from the integers identifying its sample (distinct from
    the seeds of the sample's files)."""
    state = np.random.SeedSequence([*entropy, POOL_SALT]).generate_state(1)
    return int(state[0]) % (SEED_MAX + 1)


def standalone_pool_events(n_events: int) -> int:
    """Pool size for a file generated on its own (outside a sample): as many events as the
    file, within ``POOL_MIN_EVENTS`` .. ``POOL_EVENTS``."""
    return min(POOL_EVENTS, max(POOL_MIN_EVENTS, n_events))


def generate_pool(n_events: int, seed: int, decays_in_flight: bool) -> MinBiasPool:
    """Generate ``n_events`` minimum-bias events and keep their visible particles."""
    generator = EventGenerator("MinBias", seed, 0.0, decays_in_flight)
    batch = generator.next_batch(n_events)
    pt, eta, _ = pt_eta_phi(batch.px, batch.py, batch.pz)
    keep = np.flatnonzero((batch.status > 0) & ~np.isin(np.abs(batch.pid), NEUTRINO_IDS)
                          & (np.abs(eta) < POOL_ABS_ETA_MAX))
    event = batch.event[keep]
    vertex_track = (batch.charge[keep] != 0) & (pt[keep] > VERTEX_TRACK_PT_MIN) & (
        np.abs(eta[keep]) < TRACKER_ABS_ETA_MAX)
    return MinBiasPool(
        offsets=offsets_from_counts(np.bincount(event, minlength=batch.n_events)),
        vertex_tracks=np.bincount(event[vertex_track], minlength=batch.n_events),
        **{name: getattr(batch, name)[keep]
           for name in ("pid", "charge", "px", "py", "pz", "e", "vx", "vy", "vz")})


@dataclass(frozen=True)
class Overlay:
    """Pileup bookkeeping of an overlaid batch, one entry per row of the batch."""

    pileup: np.ndarray  # the row is a pileup particle
    dz_cm: np.ndarray  # z of its vertex w.r.t. the hard-scatter vertex (0 for hard rows)
    removed: np.ndarray  # a track from it is removed by charged-hadron subtraction
    npv: np.ndarray  # per event: reconstructed primary vertices

    def is_pileup(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of ``rows`` is a pileup particle."""
        return self.pileup[rows]

    def extended(self, parents: np.ndarray) -> Overlay:
        """The bookkeeping after appending rows made by ``parents`` (e.g. conversion
        electrons of photons): they inherit their parent's entries."""
        return Overlay(*(np.concatenate([x, x[parents]])
                         for x in (self.pileup, self.dz_cm, self.removed)), self.npv)


def overlay(batch: ParticleBatch, pool: MinBiasPool, mu: float,
            rng: np.random.Generator) -> tuple[ParticleBatch, Overlay]:
    """Append Poisson(``mu``) pool events to every event of ``batch`` (see module docs).

    Pileup particles follow all hard-scatter rows; their mother and daughter indices point
    to their event's system row (they have no history), so they are neither ghosts nor
    members of a decay chain.
    """
    n_pileup = rng.poisson(mu, batch.n_events)
    picks = rng.integers(0, pool.n_events, int(n_pileup.sum()))
    host = np.repeat(np.arange(batch.n_events), n_pileup)
    dz = rng.normal(0.0, math.sqrt(2.0) * LUMINOUS_SIGMA_Z_CM, len(picks))
    angle = rng.uniform(0.0, 2.0 * np.pi, len(picks))
    mirror = np.where(rng.random(len(picks)) < 0.5, -1.0, 1.0)

    counts = np.diff(pool.offsets)[picks]
    pick_of_row = np.repeat(np.arange(len(picks)), counts)
    starts = offsets_from_counts(counts)
    source = pool.offsets[picks][pick_of_row] + np.arange(len(pick_of_row)) - starts[:-1][
        pick_of_row]
    cos, sin = np.cos(angle)[pick_of_row], np.sin(angle)[pick_of_row]
    flip = mirror[pick_of_row]

    def rotate(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cos * x[source] - sin * y[source], sin * x[source] + cos * y[source]

    px, py = rotate(pool.px, pool.py)
    vx, vy = rotate(pool.vx, pool.vy)
    event = host[pick_of_row]
    row_dz = dz[pick_of_row]
    resolved = np.abs(row_dz) >= PV_MERGE_DZ_CM
    in_fit = rng.random(len(source)) < PU_TRACK_IN_FIT
    removed = resolved & (in_fit | (np.abs(row_dz) >= DZ_COMPATIBLE_CM))
    counted = (np.abs(dz) >= PV_MERGE_DZ_CM) & (pool.vertex_tracks[picks] >= VERTEX_MIN_TRACKS)
    npv = 1 + np.bincount(host[counted], minlength=batch.n_events)

    combined = batch.append(
        event, batch.offsets[:-1][event], pool.pid[source], pool.charge[source],
        (px, py, flip * pool.pz[source], pool.e[source]),
        (vx, vy, flip * pool.vz[source] + row_dz / MM_TO_CM))
    hard = np.zeros(len(batch))
    return combined, Overlay(
        pileup=np.concatenate([hard.astype(bool), np.ones(len(source), dtype=bool)]),
        dz_cm=np.concatenate([hard, row_dz]),
        removed=np.concatenate([hard.astype(bool), removed]), npv=npv)


def puppi_alpha(group: np.ndarray, eta: np.ndarray, phi: np.ndarray, track_group: np.ndarray,
                track_pt: np.ndarray, track_eta: np.ndarray, track_phi: np.ndarray,
                n_groups: int) -> np.ndarray:
    """PUPPI's alpha = log sum_j (pT_j / dR_ij)^2 of each point over the tracks of its group
    (jet or event) with ``PUPPI_DR_MIN`` < dR < ``PUPPI_DR_MAX``; 0 without such a track
    (below any real value: a 1 GeV track at dR 0.4 gives 1.8). ``track_group`` must be
    sorted."""
    per_group = np.bincount(track_group, minlength=n_groups)
    first = offsets_from_counts(per_group)[:-1]
    n_pairs = per_group[group]
    point = np.repeat(np.arange(len(group)), n_pairs)
    pair_starts = offsets_from_counts(n_pairs)[:-1]
    track = first[group][point] + np.arange(len(point)) - pair_starts[point]
    distance = delta_r(eta[point], phi[point], track_eta[track], track_phi[track])
    near = (distance > PUPPI_DR_MIN) & (distance < PUPPI_DR_MAX)
    total = segment_sum(point[near], (track_pt[track][near] / distance[near]) ** 2, len(group))
    return np.log(np.maximum(total, 1.0))


def puppi_reference(event: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray,
                    n_events: int, rng: np.random.Generator) -> tuple[float, float]:
    """Median and RMS (around it) of alpha at ``PUPPI_PROBES`` random points per event with
    |eta| < 2.5 (where pileup particles are, uniformly), against the event's tracks
    (``event`` sorted): PUPPI's calibration on pileup particles, per batch of events."""
    group = np.repeat(np.arange(n_events), PUPPI_PROBES)
    probe_eta = rng.uniform(-TRACKER_ABS_ETA_MAX, TRACKER_ABS_ETA_MAX, len(group))
    probe_phi = rng.uniform(-np.pi, np.pi, len(group))
    alpha = puppi_alpha(group, probe_eta, probe_phi, event, pt, eta, phi, n_events)
    median = float(np.median(alpha))
    return median, max(float(np.sqrt(np.mean((alpha - median) ** 2))), PUPPI_RMS_MIN)


def puppi_weights(alpha: np.ndarray, median: float, rms: float) -> np.ndarray:
    """PUPPI-like weights: F_chi2,1dof((alpha - median)^2 / rms^2) above the median, else 0."""
    weight = np.zeros(len(alpha))
    above = alpha > median
    weight[above] = erf((alpha[above] - median) / (rms * math.sqrt(2.0)))
    return weight
