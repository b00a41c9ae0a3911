"""Toy CMS-like detector: calorimeter smearing, track impact parameters, secondary vertices.

All numbers are documented in README.md ("Built-in samples"). Lengths are in cm (CMS units) unless
a name says otherwise; Pythia vertices (mm) are converted on input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .kinematics import (
    PION_MASS,
    delta_r,
    invariant_mass,
    offsets_from_counts,
    pt_eta_phi,
    safe_divide,
    segment_count,
    segment_sum,
)

MM_TO_CM = 0.1

# --- acceptance and candidate kinds -------------------------------------------------------
CALO_ABS_ETA_MAX = 5.0
TRACKER_ABS_ETA_MAX = 2.5
TRACK_PT_MIN = 1.0  # GeV; softer charged particles are clustered but not stored
TRACK, SOFT_CHARGED, PHOTON, NEUTRAL_HADRON = 0, 1, 2, 3
NEUTRINO_IDS = (12, 14, 16)

# --- calorimeters: sigma_E / E = S / sqrt(E) (+) N / E (+) C ------------------------------
ECAL_STOCHASTIC, ECAL_NOISE, ECAL_CONSTANT = 0.028, 0.12, 0.003
HCAL_STOCHASTIC, HCAL_NOISE, HCAL_CONSTANT = 1.00, 0.0, 0.05
PHOTON_E_MIN = 0.5  # GeV, after smearing
NEUTRAL_HADRON_E_MIN = 1.0  # GeV, after smearing

# --- tracker: sigma = A (+) B * GeV / pT ------------------------------------------------
IP_XY_CONSTANT, IP_XY_MS = 10e-4, 30e-4  # cm (10 um, 30 um)
IP_Z_CONSTANT, IP_Z_MS = 20e-4, 50e-4  # cm (20 um, 50 um)
TRACK_CHI2_NDOF = 20  # normalised track chi2 ~ chi2(20) / 20
TRACK_QUALITY = 7  # qualityMask: loose | tight | highPurity
VTX_ASS_PV_FIT, VTX_ASS_DZ = 7, 5  # pvAssociationQuality UsedInFitTight / CompatibilityDz
VTX_ASS_SIP3D_SIG_MAX = 3.0

# --- tracking realism (the "realistic" detector; "ideal": none of it) -----------------
@dataclass(frozen=True)
class TrackingModel:
    """Track reconstruction effects of a detector model (documented in README.md)."""

    efficiency: float  # of charged particles with pT >= 1 GeV, |eta| < 2.5, made at the PV
    efficiency_radius: float  # cm: the efficiency falls linearly with production radius to 0
    tail_fraction: float  # tracks with a wide impact-parameter error (hit mis-assignment...)
    tail_scale: float  # their true resolution / the quoted one
    tail_chi2_scale: float  # their normalised chi2 is scaled by this (chi2 carries information)
    decays_in_flight: bool  # K0S, Lambda, Sigma, Xi, Omega decay in the tracker volume
    magnetic_field: float  # tesla along z; 0: straight tracks
    conversions: bool  # photons convert in the tracker material
    fake_rate: float  # fake tracks per real track of a jet (Poisson mean)
    pixelless_scale: float  # IP resolution of a track made beyond the last pixel layer / PV
    fake_vertex_rate: float  # probability that a jet's displaced-looking prompt tracks fit


DETECTOR_MODELS = {
    "realistic": TrackingModel(efficiency=0.90, efficiency_radius=60.0, tail_fraction=0.05,
                               tail_scale=4.0, tail_chi2_scale=1.25, decays_in_flight=True,
                               magnetic_field=3.8, conversions=True, fake_rate=0.02,
                               pixelless_scale=10.0, fake_vertex_rate=0.7),
    "ideal": TrackingModel(efficiency=1.0, efficiency_radius=math.inf, tail_fraction=0.0,
                           tail_scale=1.0, tail_chi2_scale=1.0, decays_in_flight=False,
                           magnetic_field=0.0, conversions=False, fake_rate=0.0,
                           pixelless_scale=1.0, fake_vertex_rate=0.0),
}
# photon conversions: material X/X0 = CONVERSION_X0_CENTRAL + CONVERSION_X0_SLOPE * |eta|,
# probability 1 - exp(-7/9 X/X0), at a radius uniform in the tracker volume; particle flow
# identifies CONVERSION_ID_EFFICIENCY of them and keeps the photon
CONVERSION_X0_CENTRAL, CONVERSION_X0_SLOPE = 0.4, 0.5
CONVERSION_ID_EFFICIENCY = 0.5
CONVERSION_E_MIN = 1.0  # GeV
CONVERSION_R_MIN, CONVERSION_R_MAX = 3.0, 60.0  # cm: beam pipe .. end of the tracking volume
# fake tracks: pT 1 GeV + exponential(FAKE_PT_SCALE), uniform in the jet cone, impact
# parameters N(0, FAKE_D0_SIGMA) and N(0, FAKE_Z0_SIGMA), chi2 scaled by FAKE_CHI2_SCALE
FAKE_PT_SCALE = 2.0  # GeV
FAKE_DELTA_R_MAX = 0.4
FAKE_D0_SIGMA, FAKE_Z0_SIGMA = 0.05, 0.2  # cm
FAKE_CHI2_SCALE = 1.5
CURVATURE_CM_PER_GEV = 100.0 / 0.2998  # helix radius R = pT / (0.2998 B) m
# fake vertices: a jet's tracks of no decay chain with |Sip3dSig| > FAKE_VERTEX_SIP3D_SIG_MIN
# (resolution tails, fakes, pileup, conversions) form one vertex at their measured points
# of closest approach with probability model.fake_vertex_rate, if there are >= 2 of them
FAKE_VERTEX_SIP3D_SIG_MIN = 2.0
# tracks made beyond the first pixel layer miss pixel hits: their IP resolution grows
# linearly with the production radius to model.pixelless_scale times at the last layer
PIXEL_R_FIRST, PIXEL_R_LAST = 2.9, 16.0  # cm (CMS Phase-1 barrel pixel layers 1 and 4)
# long-lived strange hadrons decaying in flight (their daughters form V0-like vertices)
V0_IDS = (310, 3122, 3222, 3112, 3322, 3312, 3334)
K0S_MASS, V0_MASS_WINDOW = 0.4976, 0.05  # GeV: 2-track SVs in the window are rejected

# --- secondary vertices ---------------------------------------------------------------
SV_TRACK_EFFICIENCY = 0.8
SV_SIN_OPENING_MIN = 0.02
SV_DXY_MIN, SV_DXY_MAX = 0.01, 2.5  # cm
SV_DXY_SIG_MIN = 3.0
SV_MASS_MAX = 6.5  # GeV
SV_JET_DELTA_R_MAX = 0.4
SV_DELTA_R_OFFSET = 0.5  # DeepNTuples: sv_deltaR = dR(SV, jet) - 0.5
DR_MIN_SV_DEFAULT = 0.4  # drminsv without (or beyond) any SV: the jet radius

# --- CSV track selection and defaults -------------------------------------------------
SELECTED_JET_DIST_MAX = 0.07  # cm
SELECTED_DECAY_LENGTH_MAX = 5.0  # cm
SELECTED_DELTA_R_MAX = 0.3
CHARM_MASS = 1.5  # GeV
ABOVE_CHARM_DEFAULT = -1.0
NO_VERTEX, RECO_VERTEX = 2, 0


@dataclass(frozen=True)
class RecoParticles:
    """Detector-level particles used as clustering input (one row per particle)."""

    row: np.ndarray  # particle row in the batch
    kind: np.ndarray  # TRACK, SOFT_CHARGED, PHOTON or NEUTRAL_HADRON
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray


def tracking_efficiency(radius_cm: np.ndarray, model: TrackingModel) -> np.ndarray:
    """Probability that a charged particle made at ``radius_cm`` from the beam becomes a
    track: ``model.efficiency`` at the PV, falling linearly to 0 at
    ``model.efficiency_radius``."""
    return model.efficiency * np.clip(1.0 - radius_cm / model.efficiency_radius, 0.0, 1.0)


def reconstruct_particles(pid: np.ndarray, status: np.ndarray, charge: np.ndarray,
                          px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray,
                          rng: np.random.Generator, radius_mm: np.ndarray | None = None,
                          model: TrackingModel = DETECTOR_MODELS["ideal"],
                          removed: np.ndarray | None = None) -> RecoParticles:
    """Visible stable particles as tracks (true momentum) or smeared calorimeter deposits.

    Charged particles inside the tracker are tracks (``SOFT_CHARGED`` below 1 GeV) with the
    probability :func:`tracking_efficiency` of their production radius ``radius_mm``.
    Photons, neutral hadrons and the other charged particles (electrons: ECAL, muons: lost,
    hadrons: HCAL) become massless calorimeter candidates with a Gaussian energy smearing;
    deposits below the thresholds are lost. Tracks flagged in ``removed`` (pileup tracks
    removed by charged-hadron subtraction) are dropped.
    """
    abs_id = np.abs(pid)
    pt, eta, _ = pt_eta_phi(px, py, pz)
    visible = (status > 0) & ~np.isin(abs_id, NEUTRINO_IDS) & (np.abs(eta) < CALO_ABS_ETA_MAX)
    in_tracker = (charge != 0) & (np.abs(eta) < TRACKER_ABS_ETA_MAX)
    if model.efficiency < 1.0 or math.isfinite(model.efficiency_radius):
        radius = np.zeros(len(pid)) if radius_mm is None else radius_mm * MM_TO_CM
        in_tracker &= rng.random(len(pid)) < tracking_efficiency(radius, model)
    charged = visible & in_tracker
    if removed is not None:
        visible &= ~(charged & removed)
        charged &= ~removed
    charged = np.flatnonzero(charged)
    electromagnetic = (abs_id == 22) | (abs_id == 11)
    calo = np.flatnonzero(visible & ~in_tracker & (abs_id != 13))

    ecal = electromagnetic[calo]
    energy = e[calo]
    stochastic = np.where(ecal, ECAL_STOCHASTIC, HCAL_STOCHASTIC)
    noise = np.where(ecal, ECAL_NOISE, HCAL_NOISE)
    constant = np.where(ecal, ECAL_CONSTANT, HCAL_CONSTANT)
    sigma = np.sqrt(stochastic**2 * energy + noise**2 + (constant * energy) ** 2)
    measured = energy + sigma * rng.standard_normal(len(calo))
    keep = measured > np.where(ecal, PHOTON_E_MIN, NEUTRAL_HADRON_E_MIN)
    calo, ecal, measured = calo[keep], ecal[keep], measured[keep]
    scale = measured / np.sqrt(px[calo] ** 2 + py[calo] ** 2 + pz[calo] ** 2)

    kind = np.where(pt[charged] >= TRACK_PT_MIN, TRACK, SOFT_CHARGED)
    return RecoParticles(
        row=np.concatenate([charged, calo]),
        kind=np.concatenate([kind, np.where(ecal, PHOTON, NEUTRAL_HADRON)]),
        px=np.concatenate([px[charged], px[calo] * scale]),
        py=np.concatenate([py[charged], py[calo] * scale]),
        pz=np.concatenate([pz[charged], pz[calo] * scale]),
        e=np.concatenate([e[charged], measured]),
    )


def _cross(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.sqrt(_dot(a, a))


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def convert_photons(pid: np.ndarray, status: np.ndarray, px: np.ndarray, py: np.ndarray,
                    pz: np.ndarray, e: np.ndarray, vertex_mm: tuple[np.ndarray, ...],
                    rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Photon conversions in the tracker material (the realistic model).

    Final-state photons with E > ``CONVERSION_E_MIN`` and |eta| < 2.5 convert with
    probability 1 - exp(-7/9 X/X0(eta)) and are not identified as conversions by particle
    flow (``CONVERSION_ID_EFFICIENCY``, those stay photons) at a transverse radius uniform in
    ``CONVERSION_R_MIN`` .. ``CONVERSION_R_MAX`` along their flight; the e+ and e- share the
    energy uniformly and keep the photon direction. Returns (rows of the converted photons,
    per electron: "photon" (the photon's row), "pid", "charge", "px", "py", "pz", "e",
    "vx", "vy", "vz" in mm), two electrons per photon, e- first.
    """
    pt, eta, _ = pt_eta_phi(px, py, pz)
    candidate = np.flatnonzero((pid == 22) & (status > 0) & (e > CONVERSION_E_MIN)
                               & (np.abs(eta) < TRACKER_ABS_ETA_MAX))
    material = CONVERSION_X0_CENTRAL + CONVERSION_X0_SLOPE * np.abs(eta[candidate])
    probability = (1.0 - np.exp(-7.0 / 9.0 * material)) * (1.0 - CONVERSION_ID_EFFICIENCY)
    converted = candidate[rng.random(len(candidate)) < probability]
    radius = rng.uniform(CONVERSION_R_MIN, CONVERSION_R_MAX, len(converted)) / MM_TO_CM
    share = rng.random(len(converted))
    path = radius / pt[converted]  # mm per GeV of pT: the point is vertex + path * p
    point = [v[converted] + path * m[converted]
             for v, m in zip(vertex_mm, (px, py, pz), strict=True)]
    fraction = np.stack([share, 1.0 - share], axis=1).ravel()
    photon = np.repeat(converted, 2)
    electrons = {
        "photon": photon,
        "pid": np.tile([11, -11], len(converted)),
        "charge": np.tile([-1.0, 1.0], len(converted)),
        **{name: m[photon] * fraction for name, m in (("px", px), ("py", py), ("pz", pz),
                                                      ("e", e))},
        **{name: np.repeat(x, 2) for name, x in zip(("vx", "vy", "vz"), point, strict=True)},
    }
    return converted, electrons


def fake_tracks(n_tracks: np.ndarray, jet_eta: np.ndarray, jet_phi: np.ndarray,
                rng: np.random.Generator, model: TrackingModel
                ) -> tuple[np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Fake tracks of the jets: Poisson(``model.fake_rate`` x real tracks) per jet.

    Returns (jet of each fake, momentum (px, py, pz) in GeV, production point in mm): the
    point is chosen on the measured line so that the straight track has d0 ~
    N(0, ``FAKE_D0_SIGMA``) and z0 ~ N(0, ``FAKE_Z0_SIGMA``).
    """
    per_jet = rng.poisson(model.fake_rate * n_tracks)
    jet = np.repeat(np.arange(len(n_tracks)), per_jet)
    n = len(jet)
    pt = TRACK_PT_MIN + rng.exponential(FAKE_PT_SCALE, n)
    distance = FAKE_DELTA_R_MAX * np.sqrt(rng.random(n))
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    eta = np.clip(jet_eta[jet] + distance * np.cos(angle), -TRACKER_ABS_ETA_MAX + 1e-6,
                  TRACKER_ABS_ETA_MAX - 1e-6)
    phi = jet_phi[jet] + distance * np.sin(angle)
    momentum = (pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta))
    d0 = rng.normal(0.0, FAKE_D0_SIGMA, n) / MM_TO_CM
    z0 = rng.normal(0.0, FAKE_Z0_SIGMA, n) / MM_TO_CM
    point = (d0 * np.sin(phi), -d0 * np.cos(phi), z0)  # d0 along (py, -px) / pT
    return jet, momentum, point


def track_features(momentum: tuple[np.ndarray, ...], vertex_mm: tuple[np.ndarray, ...],
                   jet_axis: tuple[np.ndarray, ...], jet_eta: np.ndarray,
                   jet_phi: np.ndarray, rng: np.random.Generator,
                   model: TrackingModel = DETECTOR_MODELS["ideal"],
                   charge: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measured impact parameters and track-to-jet variables (CMS TrackInfoBuilder meaning).

    The true track is a straight line from its production vertex. Its transverse (d0) and
    longitudinal (z0) impact parameters w.r.t. the primary vertex at the origin are smeared
    with Gaussian resolutions, for a fraction ``model.tail_fraction`` of the tracks
    ``model.tail_scale`` times wider than the quoted uncertainty (their chi2 is scaled by
    ``model.tail_chi2_scale``); the 3D impact parameter and the distance to the jet axis
    follow from the measured line. Signs: positive if the point of closest approach lies
    downstream along the jet axis. ``jet_axis`` is the unit vector of the jet momentum.
    With ``model.magnetic_field`` (and ``charge``) a track made away from the PV is a helix
    through its production point: its d0 is that of the circle (R = pT / (0.3 B)), e.g.
    a few mm for a 2 GeV conversion electron made at 10 cm, and its azimuth that of the
    circle at the point of closest approach; z0 stays that of the straight line. Tracks
    made beyond the first pixel layer have a resolution (quoted
    and true) up to ``model.pixelless_scale`` times wider (see ``PIXEL_R_FIRST``).
    ``ip_scale`` in the result is each track's true / quoted resolution.
    """
    px, py, pz = momentum
    vx, vy, vz = (v * MM_TO_CM for v in vertex_mm)
    pt, eta, phi = pt_eta_phi(px, py, pz)
    p = np.hypot(pt, pz)
    sin_theta = pt / p
    unit = (px / p, py / p, pz / p)

    sigma_xy = np.hypot(IP_XY_CONSTANT, IP_XY_MS / pt)
    sigma_z = np.hypot(IP_Z_CONSTANT, IP_Z_MS / pt)
    if model.pixelless_scale != 1.0:
        lever = np.clip((np.hypot(vx, vy) - PIXEL_R_FIRST) / (PIXEL_R_LAST - PIXEL_R_FIRST),
                        0.0, 1.0)
        hits = 1.0 + (model.pixelless_scale - 1.0) * lever
        sigma_xy, sigma_z = sigma_xy * hits, sigma_z * hits
    normal_x, normal_y = py / pt, -px / pt  # transverse unit vector with d0 > 0 along it
    g_xy, g_z = rng.standard_normal(len(px)), rng.standard_normal(len(px))
    ip_scale = np.ones(len(px))
    if model.tail_fraction > 0:
        ip_scale[rng.random(len(px)) < model.tail_fraction] = model.tail_scale
    d0 = vx * normal_x + vy * normal_y
    if model.magnetic_field > 0 and charge is not None:
        # circle through the production point tangent to the momentum; for B along +z a
        # positive track bends clockwise: centre = point - sign(q) R (left normal)
        radius = pt * CURVATURE_CM_PER_GEV / model.magnetic_field
        bend = -np.sign(charge) * radius
        centre_x, centre_y = vx - bend * py / pt, vy + bend * px / pt
        helix = -np.sign(bend) * (np.hypot(centre_x, centre_y) - radius)
        d0 = np.where(charge != 0, helix, d0)
    d0 = d0 + sigma_xy * ip_scale * g_xy
    z0 = vz - (vx * px + vy * py) / pt**2 * pz + sigma_z * ip_scale * g_z
    if model.magnetic_field > 0 and charge is not None:
        # the direction at the point of closest approach: the helix turned back over the
        # transverse path from there to the production point (a conversion pair opens up)
        turn = np.where(charge != 0, np.sign(charge) * (vx * px + vy * py) / pt / radius, 0.0)
        px, py = px * np.cos(turn) - py * np.sin(turn), px * np.sin(turn) + py * np.cos(turn)
        momentum = (px, py, pz)
        phi = np.arctan2(py, px)
        unit = (px / p, py / p, pz / p)
        normal_x, normal_y = py / pt, -px / pt

    # measured line: point (d0 * n, z0) at the transverse closest approach, direction unit
    point = (d0 * normal_x, d0 * normal_y, z0)
    along = _dot(point, unit)
    closest = tuple(c - along * u for c, u in zip(point, unit, strict=True))
    ip3d = np.hypot(d0, z0 * sin_theta)
    variance_3d = np.where(
        ip3d > 0,
        safe_divide((d0 * sigma_xy) ** 2 + (z0 * sin_theta**2 * sigma_z) ** 2, ip3d**2),
        0.5 * (sigma_xy**2 + (sigma_z * sin_theta) ** 2))
    sigma_3d = np.sqrt(variance_3d)
    sip2d = np.abs(d0) * _sign(point[0] * jet_axis[0] + point[1] * jet_axis[1])
    sip3d = ip3d * _sign(_dot(closest, jet_axis))

    # line-to-line distance to the jet axis (through the PV) and decay length along it
    normal = _cross(unit, jet_axis)
    n_norm = _norm(normal)
    cos_track_jet = _dot(unit, jet_axis)
    parallel = n_norm < 1e-9
    distance = np.where(parallel, _norm(_cross(point, jet_axis)),
                        np.abs(safe_divide(_dot(point, normal), n_norm)))
    decay_length = np.where(
        parallel, _dot(point, jet_axis),
        safe_divide(_dot(point, jet_axis) - along * cos_track_jet, 1.0 - cos_track_jet**2))

    p_par = _dot(momentum, jet_axis)
    p_perp = _norm(_cross(momentum, jet_axis))
    energy_pion = np.sqrt(p**2 + PION_MASS**2)
    return {
        "pt": pt, "eta": eta, "phi": phi,
        "sigma_xy": sigma_xy,
        "sip2d_val": sip2d, "sip2d_sig": sip2d / sigma_xy,
        "sip3d_val": sip3d, "sip3d_sig": sip3d / sigma_3d,
        "jet_dist": -distance,  # CMS IPTools::jetTrackDistance: minus the distance
        "decay_length": np.abs(decay_length),
        "eta_rel": 0.5 * np.log((energy_pion + p_par) / (energy_pion - p_par)),
        "pt_rel": p_perp,
        "p_par": p_par,
        "p_par_ratio": p_par / p,
        "delta_r": delta_r(eta, phi, jet_eta, jet_phi),
        "chi2": rng.chisquare(TRACK_CHI2_NDOF, len(px)) / TRACK_CHI2_NDOF
        * np.where(ip_scale > 1.0, model.tail_chi2_scale, 1.0),
        "ip_scale": ip_scale,
        "closest": closest,  # cm: the measured point of closest approach to the PV
    }


def secondary_vertices(track_jet: np.ndarray, chain: np.ndarray,
                       momentum: tuple[np.ndarray, ...], vertex_mm: tuple[np.ndarray, ...],
                       sigma_xy: np.ndarray, jets: dict[str, np.ndarray],
                       rng: np.random.Generator, ip_scale: np.ndarray | None = None,
                       model: TrackingModel = DETECTOR_MODELS["ideal"]
                       ) -> dict[str, np.ndarray]:
    """Secondary vertices from the displaced tracks of one jet and one decay chain.

    ``chain`` identifies the decay chain of each track (-1: produced at the PV), so the
    products of a B hadron and of its C-hadron daughter form one vertex. Each track enters
    the vertexing with probability ``SV_TRACK_EFFICIENCY``; groups of >= 2 tracks become
    vertices at the mean true production point of their tracks, smeared with an
    anisotropic resolution (see docs): the true one from each track's ``ip_scale`` (true /
    quoted IP resolution), the quoted errors and chi2 ~ chi2(2n - 3) times the tracks' mean
    ``ip_scale**2`` (a mis-measured track spoils the fit). With ``model.decays_in_flight``,
    2-track vertices within ``V0_MASS_WINDOW`` of the K0S mass are rejected (the V0 veto of
    the CMS b-tag vertexing). Returns per-vertex arrays (rows grouped by jet,
    ``d3dsig`` descending; key "jet" is the jet index) after the CMS-like vertex selection.
    """
    used = np.flatnonzero((rng.random(len(track_jet)) < SV_TRACK_EFFICIENCY) & (chain >= 0))
    used = used[np.lexsort((chain[used], track_jet[used]))]
    new_group = np.ones(len(used), dtype=bool)
    new_group[1:] = (np.diff(track_jet[used]) != 0) | (np.diff(chain[used]) != 0)
    group = np.cumsum(new_group) - 1
    in_vertex = np.bincount(group)[group] >= 2
    used = used[in_vertex]
    group = np.cumsum(new_group[in_vertex]) - 1
    n_groups = int(group[-1]) + 1 if len(group) else 0

    px, py, pz = (m[used] for m in momentum)
    p2 = px**2 + py**2 + pz**2
    total = tuple(segment_sum(group, c, n_groups) for c in (px, py, pz))
    energy = segment_sum(group, np.sqrt(p2 + PION_MASS**2), n_groups)
    n_vtx_tracks = segment_count(group, n_groups)
    jet = track_jet[used][np.unique(group, return_index=True)[1]]
    true_position = tuple(
        segment_sum(group, v[used], n_groups) * MM_TO_CM / n_vtx_tracks for v in vertex_mm)

    # resolution: sigma_perp from the track IP resolutions, sigma_par from the opening angle
    sigma_perp = 1.0 / np.sqrt(segment_sum(group, 1.0 / sigma_xy[used] ** 2, n_groups))
    p_total = _norm(total)
    axis = tuple(safe_divide(c, p_total) for c in total)
    cos2 = safe_divide(_dot((px, py, pz), tuple(a[group] for a in axis)) ** 2, p2)
    sin_open = np.sqrt(np.maximum(segment_sum(group, 1.0 - cos2, n_groups), 0.0) / n_vtx_tracks)
    sigma_par = sigma_perp / np.maximum(sin_open, SV_SIN_OPENING_MIN)
    scale2 = np.ones(n_groups) if ip_scale is None else \
        segment_sum(group, ip_scale[used] ** 2, n_groups) / n_vtx_tracks
    true_perp = sigma_perp if ip_scale is None else \
        1.0 / np.sqrt(segment_sum(group, 1.0 / (ip_scale[used] * sigma_xy[used]) ** 2, n_groups))
    true_par = true_perp / np.maximum(sin_open, SV_SIN_OPENING_MIN)
    p_t = np.hypot(total[0], total[1])
    ortho1 = (safe_divide(-total[1], p_t), safe_divide(total[0], p_t), np.zeros(n_groups))
    ortho2 = _cross(axis, ortho1)
    g = rng.standard_normal((3, n_groups))
    flight = tuple(
        x + true_par * g[0] * a + true_perp * (g[1] * o1 + g[2] * o2)
        for x, a, o1, o2 in zip(true_position, axis, ortho1, ortho2, strict=True))

    d3d = _norm(flight)
    dxy = np.hypot(flight[0], flight[1])
    cos_3d = safe_divide(_dot(flight, axis), d3d)
    cos_xy = safe_divide(flight[0] * axis[0] + flight[1] * axis[1], dxy)
    extra = sigma_par**2 - sigma_perp**2
    d3d_err = np.sqrt(sigma_perp**2 + extra * cos_3d**2)
    dxy_err = np.sqrt(sigma_perp**2 + extra * cos_xy**2)
    ndof = 2 * n_vtx_tracks - 3
    chi2 = rng.chisquare(ndof) * scale2
    pt, eta, phi = pt_eta_phi(*total)
    mass = invariant_mass(energy, *total)
    jet_delta_r = delta_r(eta, phi, jets["eta"][jet], jets["phi"][jet])

    vertices = {
        "jet": jet, "pt": pt, "eta": eta, "phi": phi, "e": energy, "mass": mass,
        "ntracks": n_vtx_tracks.astype(np.float64), "chi2": chi2, "normchi2": chi2 / ndof,
        "dxy": dxy, "dxysig": dxy / dxy_err, "d3d": d3d, "d3dsig": d3d / d3d_err,
        "costhetasvpv": cos_3d, "enratio": safe_divide(energy, jets["e"][jet]),
        "deltaR": jet_delta_r - SV_DELTA_R_OFFSET,
    }
    selected = ((dxy > SV_DXY_MIN) & (dxy < SV_DXY_MAX) & (vertices["dxysig"] > SV_DXY_SIG_MIN)
                & (mass < SV_MASS_MAX) & (jet_delta_r < SV_JET_DELTA_R_MAX))
    if model.decays_in_flight:
        selected &= ~((n_vtx_tracks == 2) & (np.abs(mass - K0S_MASS) < V0_MASS_WINDOW))
    order = np.flatnonzero(selected)
    order = order[np.lexsort((-vertices["d3dsig"][order], jet[order]))]
    return {name: values[order] for name, values in vertices.items()}


def fake_vertex_chains(track_jet: np.ndarray, chain: np.ndarray, sip3d_sig: np.ndarray,
                       n_jets: int, rng: np.random.Generator, model: TrackingModel,
                       first_chain: int) -> np.ndarray:
    """``chain`` with the displaced-looking tracks of no decay chain of a fraction
    ``model.fake_vertex_rate`` of the jets grouped into one fake chain per jet
    (``first_chain + jet``); see ``FAKE_VERTEX_SIP3D_SIG_MIN``."""
    candidate = (chain < 0) & (np.abs(sip3d_sig) > FAKE_VERTEX_SIP3D_SIG_MIN)
    fitted = rng.random(n_jets) < model.fake_vertex_rate
    enough = np.bincount(track_jet[candidate], minlength=n_jets) >= 2
    grouped = candidate & (fitted & enough)[track_jet]
    return np.where(grouped, first_chain + track_jet, chain)


def min_delta_r_to_vertex(jet: np.ndarray, eta: np.ndarray, phi: np.ndarray,
                          vertices: dict[str, np.ndarray], n_jets: int) -> np.ndarray:
    """Minimum dR between each candidate and the SVs of its jet, capped at the jet radius."""
    result = np.full(len(jet), DR_MIN_SV_DEFAULT)
    counts = segment_count(vertices["jet"], n_jets)
    first = offsets_from_counts(counts)[:-1]
    for k in range(int(counts.max(initial=0))):
        has = counts[jet] > k
        row = first[jet[has]] + k
        result[has] = np.minimum(
            result[has], delta_r(eta[has], phi[has], vertices["eta"][row], vertices["phi"][row]))
    return result


def csv_tag_variables(track_jet: np.ndarray, tracks: dict[str, np.ndarray],
                      momentum: tuple[np.ndarray, ...], jets: dict[str, np.ndarray],
                      vertex_tracks: np.ndarray, n_vertices: np.ndarray) -> dict[str, np.ndarray]:
    """TagVarCSV_* jet variables of the CMS CombinedSV computer.

    ``tracks`` and ``momentum`` rows must be grouped by jet and ordered by decreasing
    2D IP significance within the jet. ``vertex_tracks``/``n_vertices``: per jet, number of
    tracks in selected SVs and number of selected SVs.
    """
    n_jets = len(jets["pt"])
    selected = np.flatnonzero(
        (np.abs(tracks["jet_dist"]) < SELECTED_JET_DIST_MAX)
        & (tracks["decay_length"] < SELECTED_DECAY_LENGTH_MAX)
        & (tracks["delta_r"] < SELECTED_DELTA_R_MAX))
    jet = track_jet[selected]
    px, py, pz = (m[selected] for m in momentum)
    energy = np.sqrt(px**2 + py**2 + pz**2 + PION_MASS**2)
    n_selected = segment_count(jet, n_jets)

    sums = [segment_sum(jet, x, n_jets) for x in (px, py, pz, energy)]
    sum_pt, sum_eta, sum_phi = pt_eta_phi(*sums[:3])
    sum_et = safe_divide(sums[3] * sum_pt, np.hypot(sum_pt, sums[2]))
    jet_et = safe_divide(jets["e"] * jets["pt"], np.hypot(jets["pt"], jets["pz"]))
    sum_delta_r = np.where(n_selected > 0,
                           delta_r(sum_eta, sum_phi, jets["eta"], jets["phi"]), 0.0)

    # first track (by decreasing IP significance) that lifts the running mass above charm
    starts = offsets_from_counts(n_selected)[:-1][jet]

    def running_sum(x: np.ndarray) -> np.ndarray:
        total = np.cumsum(x)
        return total - np.r_[0.0, total][starts]

    mass = invariant_mass(*(running_sum(x) for x in (energy, px, py, pz)))
    above = np.flatnonzero(mass > CHARM_MASS)
    jets_above, first = np.unique(jet[above], return_index=True)
    track_above = selected[above[first]]
    out = {
        "TagVarCSV_trackSumJetEtRatio": safe_divide(sum_et, jet_et),
        "TagVarCSV_trackSumJetDeltaR": sum_delta_r,
        "TagVarCSV_vertexCategory": np.where(n_vertices > 0, RECO_VERTEX, NO_VERTEX),
        "TagVarCSV_jetNSelectedTracks": n_selected,
        "TagVarCSV_jetNTracksEtaRel": vertex_tracks,
    }
    for dim in ("2d", "3d"):
        for kind in ("Val", "Sig"):
            values = np.full(n_jets, ABOVE_CHARM_DEFAULT)
            values[jets_above] = tracks[f"sip{dim}_{kind.lower()}"][track_above]
            out[f"TagVarCSV_trackSip{dim}{kind}AboveCharm"] = values
    return out
