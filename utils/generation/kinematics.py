"""Vectorised kinematics and per-segment (per-jet) helpers."""

from __future__ import annotations

import numpy as np

PION_MASS = 0.13957  # GeV


def safe_divide(num: np.ndarray, den: np.ndarray, default: float = 0.0) -> np.ndarray:
    """``num / den`` with ``default`` where ``den == 0``."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), den)
    return np.divide(num, den, out=np.full(num.shape, default), where=den != 0)


def pt_eta_phi(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, ...]:
    """Transverse momentum, pseudorapidity and azimuth (eta = +-20 along the beam)."""
    pt = np.hypot(px, py)
    eta = np.arcsinh(safe_divide(pz, pt, 0.0))
    eta = np.where(pt > 0, eta, np.copysign(20.0, pz))
    return pt, eta, np.arctan2(py, px)


def delta_r(eta1: np.ndarray, phi1: np.ndarray, eta2: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    """Distance in (eta, phi)."""
    dphi = np.mod(phi1 - phi2 + np.pi, 2 * np.pi) - np.pi
    return np.hypot(eta1 - eta2, dphi)


def invariant_mass(e: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Invariant mass, 0 for (numerically) space-like four-vectors."""
    return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))


def segment_sum(segment: np.ndarray, values: np.ndarray, n_segments: int) -> np.ndarray:
    """Sum of ``values`` per segment id (0..n_segments-1)."""
    return np.bincount(segment, weights=values, minlength=n_segments)


def segment_count(segment: np.ndarray, n_segments: int) -> np.ndarray:
    """Number of entries per segment id."""
    return np.bincount(segment, minlength=n_segments)


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """Offsets (length n+1) of contiguous segments with the given sizes."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets
