"""From Pythia events to DeepNTuples-style ROOT files: the per-batch pipeline and the writer."""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from utils.io import atomic_path
from utils.settings import GenerationSettings

from . import detector, pileup
from .clustering import JET_ABS_ETA_MAX, JET_PT_MIN, JET_R, cluster
from .detector import NEUTRAL_HADRON, PHOTON, TRACK
from .generator import PROCESSES, SEED_MAX, EventGenerator, ParticleBatch
from .kinematics import (
    PION_MASS,
    delta_r,
    invariant_mass,
    offsets_from_counts,
    pt_eta_phi,
    segment_count,
    segment_sum,
)
from .schema import GROUPS, JET_BRANCHES, TREE_NAME, counter_name, tree_types
from .truth import (
    GHOST_SCALE,
    LABELS,
    FlavourTruth,
    decay_chain_origin,
    find_truth,
    jet_labels,
)

EVENTS_PER_BATCH = 100  # fixed: the detector random numbers depend on the batch partition
JETS_PER_BASKET = 5000
GHOST_B, GHOST_C, GHOST_PARTON = 4, 5, 6


@dataclass
class JetTable:
    """Output of one or more batches: per-jet arrays and jagged groups (counts, fields)."""

    jets: dict[str, np.ndarray]
    groups: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]

    def __len__(self) -> int:
        return len(self.jets["jet_pt"])

    @staticmethod
    def concatenate(tables: list[JetTable]) -> JetTable:
        """Join tables jet-wise."""
        jets = {name: np.concatenate([t.jets[name] for t in tables]) for name in tables[0].jets}
        groups = {}
        for group, (_, fields) in tables[0].groups.items():
            counts = np.concatenate([t.groups[group][0] for t in tables])
            groups[group] = (counts, {
                field: np.concatenate([t.groups[group][1][field] for t in tables])
                for field in fields})
        return JetTable(jets, groups)

    def to_branches(self) -> dict[str, np.ndarray | ak.Array]:
        """Arrays in the form expected by ``uproot`` ``WritableTree.extend``."""
        out: dict[str, np.ndarray | ak.Array] = {
            name: self.jets[name].astype(dtype) for name, (dtype, _) in JET_BRANCHES.items()}
        for group, (counts, fields) in self.groups.items():
            offsets = offsets_from_counts(counts)
            record = ak.contents.RecordArray(
                [ak.contents.NumpyArray(fields[f].astype(np.float32)) for f in GROUPS[group][1]],
                list(GROUPS[group][1]))
            out[group] = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), record))
        return out


@dataclass(frozen=True)
class Constituents:
    """Jet constituents of a batch: jet index, kind (detector.TRACK, ..., GHOST_*) and the
    row in the particle record; ``reco`` is the row in :class:`detector.RecoParticles`
    (meaningless for ghosts)."""

    jet: np.ndarray
    kind: np.ndarray
    row: np.ndarray
    reco: np.ndarray

    def of_kind(self, *kinds: int) -> Constituents:
        """The constituents of the given kinds."""
        mask = np.isin(self.kind, kinds)
        return Constituents(self.jet[mask], self.kind[mask], self.row[mask], self.reco[mask])


def cluster_jets(batch: ParticleBatch, truth: FlavourTruth, reco: detector.RecoParticles,
                 rho: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], Constituents]:
    """Anti-kT jets (pT > 15 GeV, |eta| < 2.5) of the detector-level particles plus ghosts.

    ``rho`` (per event, GeV per unit area): the pileup offset correction, the jet
    four-momentum is scaled by 1 - rho * pi R^2 / pT before the pT threshold.
    Returns the jet kinematics (keys event, pt, eta, phi, e, px, py, pz, axis) and the jet
    constituents, ghosts included.
    """
    ghost_rows = (truth.b_hadrons, truth.c_hadrons, truth.partons)
    ghost_kinds = (GHOST_B, GHOST_C, GHOST_PARTON)
    all_ghosts = np.concatenate(ghost_rows)
    row = np.concatenate([reco.row, all_ghosts])
    kind = np.concatenate([reco.kind, *(np.full(len(r), k)
                                        for r, k in zip(ghost_rows, ghost_kinds, strict=True))])
    momenta = [np.concatenate([getattr(reco, c), getattr(batch, c)[all_ghosts] * GHOST_SCALE])
               for c in ("px", "py", "pz", "e")]
    order = np.argsort(batch.event[row], kind="stable")
    found = cluster(batch.event[row][order], *(m[order] for m in momenta), batch.n_events)

    pt, eta, phi = pt_eta_phi(found.px, found.py, found.pz)
    scale = np.ones(len(pt))
    if rho is not None:
        scale = np.maximum(1.0 - rho[found.event] * np.pi * JET_R**2 / pt, 0.0)
    keep = (np.abs(eta) < JET_ABS_ETA_MAX) & (scale * pt > JET_PT_MIN)
    p = np.sqrt(found.px**2 + found.py**2 + found.pz**2)[keep]
    s = scale[keep]
    jets = {"event": found.event[keep], "pt": s * pt[keep], "eta": eta[keep],
            "phi": phi[keep], "e": s * found.e[keep], "px": s * found.px[keep],
            "py": s * found.py[keep], "pz": s * found.pz[keep]}
    jets["axis"] = (jets["px"] / p, jets["py"] / p, jets["pz"] / p)

    kept = keep[found.constituent_jet]
    inputs = order[found.constituent_input[kept]]
    constituents = Constituents(jet=(np.cumsum(keep) - 1)[found.constituent_jet[kept]],
                                kind=kind[inputs], row=row[inputs], reco=inputs)
    return jets, constituents


def charged_candidates(batch: ParticleBatch, jets: dict[str, np.ndarray],
                       tracks_in_jets: Constituents, rng: np.random.Generator,
                       model: detector.TrackingModel = detector.DETECTOR_MODELS["ideal"],
                       overlay: pileup.Overlay | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray],
                                  dict[str, np.ndarray]]:
    """Tracks, secondary vertices and CSV variables of the jets.

    Pileup tracks (rows of ``overlay``) and fake tracks (``model.fake_rate``) belong to no
    decay chain; they can only form fake vertices (``model.fake_vertex_rate``). Returns
    (tracks per jet, Cpfcan fields sorted by decreasing Sip2dSig, SV arrays, TagVarCSV
    branches).
    """
    n_jets = len(jets["pt"])
    jet, row = tracks_in_jets.jet, tracks_in_jets.row
    chain = decay_chain_origin(batch, row)
    if model.decays_in_flight:  # the daughters of a V0 or hyperon form their own vertex
        mother = batch.mother1[row]
        chain = np.where(np.isin(np.abs(batch.pid[mother]), detector.V0_IDS), mother, chain)
    from_pileup = np.zeros(len(row), dtype=bool) if overlay is None else overlay.is_pileup(row)
    chain = np.where(from_pileup, -1, chain)
    momentum = (batch.px[row], batch.py[row], batch.pz[row])
    vertex = (batch.vx[row], batch.vy[row], batch.vz[row])
    charge, energy = batch.charge[row], batch.e[row]
    fake = np.zeros(len(row), dtype=bool)
    if model.fake_rate > 0:
        fake_jet, fake_momentum, fake_point = detector.fake_tracks(
            segment_count(jet, n_jets), jets["eta"], jets["phi"], rng, model)
        n_fake = len(fake_jet)
        jet = np.concatenate([jet, fake_jet])
        momentum = tuple(np.concatenate(pair) for pair in zip(momentum, fake_momentum,
                                                                strict=True))
        vertex = tuple(np.concatenate(pair) for pair in zip(vertex, fake_point, strict=True))
        charge = np.concatenate([charge, np.zeros(n_fake)])  # straight: d0 as drawn
        energy = np.concatenate([energy, np.sqrt(sum(m[-n_fake:] ** 2 for m in momentum)
                                                 + PION_MASS**2)])
        chain = np.concatenate([chain, np.full(n_fake, -1)])
        from_pileup = np.concatenate([from_pileup, np.zeros(n_fake, dtype=bool)])
        fake = np.concatenate([fake, np.ones(n_fake, dtype=bool)])
    tracks = detector.track_features(momentum, vertex, tuple(a[jet] for a in jets["axis"]),
                                     jets["eta"][jet], jets["phi"][jet], rng, model, charge)
    tracks["chi2"] = np.where(fake, tracks["chi2"] * detector.FAKE_CHI2_SCALE, tracks["chi2"])
    if model.fake_vertex_rate > 0:  # fake vertices sit at the tracks' measured points
        grouped = detector.fake_vertex_chains(jet, chain, tracks["sip3d_sig"], n_jets, rng,
                                              model, len(batch))
        faked = grouped != chain
        vertex = tuple(np.where(faked, c / detector.MM_TO_CM, v)
                       for c, v in zip(tracks["closest"], vertex, strict=True))
        chain = grouped
    del tracks["closest"]
    vertices = detector.secondary_vertices(jet, chain, momentum, vertex, tracks["sigma_xy"],
                                           jets, rng, tracks["ip_scale"], model)

    sort = np.lexsort((-tracks["sip2d_sig"], jet))
    jet, energy, from_pileup = jet[sort], energy[sort], from_pileup[sort]
    tracks = {name: values[sort] for name, values in tracks.items()}
    csv = detector.csv_tag_variables(
        jet, tracks, tuple(m[sort] for m in momentum), jets,
        vertex_tracks=segment_sum(vertices["jet"], vertices["ntracks"], n_jets),
        n_vertices=segment_count(vertices["jet"], n_jets))
    n_tracks = len(jet)
    fields = {
        "BtagPf_trackEtaRel": tracks["eta_rel"],
        "BtagPf_trackPtRel": tracks["pt_rel"],
        "BtagPf_trackPPar": tracks["p_par"],
        "BtagPf_trackDeltaR": tracks["delta_r"],
        "BtagPf_trackPParRatio": tracks["p_par_ratio"],
        "BtagPf_trackSip2dVal": tracks["sip2d_val"],
        "BtagPf_trackSip2dSig": tracks["sip2d_sig"],
        "BtagPf_trackSip3dVal": tracks["sip3d_val"],
        "BtagPf_trackSip3dSig": tracks["sip3d_sig"],
        "BtagPf_trackJetDistVal": tracks["jet_dist"],
        "ptrel": tracks["pt"] / jets["pt"][jet],
        "drminsv": detector.min_delta_r_to_vertex(jet, tracks["eta"], tracks["phi"],
                                                  vertices, n_jets),
        "VTX_ass": np.where(np.abs(tracks["sip3d_sig"]) < detector.VTX_ASS_SIP3D_SIG_MAX,
                            detector.VTX_ASS_PV_FIT, detector.VTX_ASS_DZ),
        "puppiw": np.ones(n_tracks),
        "chi2": tracks["chi2"],
        "quality": np.full(n_tracks, detector.TRACK_QUALITY),
        "pt": tracks["pt"], "eta": tracks["eta"], "phi": tracks["phi"], "e": energy,
        "isPileup": from_pileup.astype(np.float64),
    }
    return segment_count(jet, n_jets), fields, vertices, csv


def neutral_candidates(reco: detector.RecoParticles, jets: dict[str, np.ndarray],
                       neutrals_in_jets: Constituents, vertices: dict[str, np.ndarray],
                       overlay: pileup.Overlay | None = None,
                       charged: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
                       reference: tuple[float, float] | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Npfcan fields sorted by decreasing pT / jet pT, and the number per jet.

    With pileup (``overlay``, ``charged``: tracks per jet and Cpfcan fields, and the alpha
    ``reference`` (median, RMS) of :func:`pileup.puppi_reference`) the PUPPI weights come
    from :func:`pileup.puppi_weights`; without, they are 1.
    """
    n_jets = len(jets["pt"])
    pt, eta, phi = pt_eta_phi(*(getattr(reco, c)[neutrals_in_jets.reco]
                                for c in ("px", "py", "pz")))
    ptrel = pt / jets["pt"][neutrals_in_jets.jet]
    sort = np.lexsort((-ptrel, neutrals_in_jets.jet))
    jet, index = neutrals_in_jets.jet[sort], neutrals_in_jets.reco[sort]
    pt, eta, phi = pt[sort], eta[sort], phi[sort]
    photon = (reco.kind[index] == PHOTON).astype(np.float64)
    puppiw = np.ones(len(jet))
    from_pileup = np.zeros(len(jet), dtype=bool) if overlay is None else \
        overlay.is_pileup(reco.row[index])
    if charged is not None and reference is not None:
        counts, fields = charged
        alpha = pileup.puppi_alpha(jet, eta, phi, np.repeat(np.arange(n_jets), counts),
                                   fields["pt"], fields["eta"], fields["phi"], n_jets)
        puppiw = pileup.puppi_weights(alpha, *reference)
    fields = {
        "ptrel": ptrel[sort],
        "deltaR": delta_r(eta, phi, jets["eta"][jet], jets["phi"][jet]),
        "isGamma": photon,
        "HadFrac": 1.0 - photon,
        "drminsv": detector.min_delta_r_to_vertex(jet, eta, phi, vertices, n_jets),
        "puppiw": puppiw,
        "pt": pt, "eta": eta, "phi": phi, "e": reco.e[index],
        "isPileup": from_pileup.astype(np.float64),
    }
    return segment_count(jet, n_jets), fields


def _convert_photons(batch: ParticleBatch, overlay: pileup.Overlay | None,
                     rng: np.random.Generator) -> tuple[ParticleBatch, pileup.Overlay | None]:
    """The batch with its converted photons replaced by their e+ e- pairs."""
    converted, electrons = detector.convert_photons(
        batch.pid, batch.status, batch.px, batch.py, batch.pz, batch.e,
        (batch.vx, batch.vy, batch.vz), rng)
    status = batch.status.copy()
    status[converted] = -1  # the photon is gone: its e+ e- follow
    photon = electrons["photon"]
    batch = batch.append(batch.event[photon], photon, electrons["pid"], electrons["charge"],
                         tuple(electrons[c] for c in ("px", "py", "pz", "e")),
                         tuple(electrons[c] for c in ("vx", "vy", "vz")), status)
    return batch, None if overlay is None else overlay.extended(photon)


def _pileup_corrections(batch: ParticleBatch, reco: detector.RecoParticles,
                        overlay: pileup.Overlay, rng: np.random.Generator
                        ) -> tuple[tuple[float, float], np.ndarray]:
    """The PUPPI alpha reference (median, RMS) and rho per event: the neutral pileup pT
    per unit area in |eta| < 2.5 (the jets' offset correction)."""
    tracks = np.flatnonzero(reco.kind == TRACK)
    tracks = tracks[np.argsort(batch.event[reco.row[tracks]], kind="stable")]
    reference = pileup.puppi_reference(
        batch.event[reco.row[tracks]],
        *pt_eta_phi(*(getattr(reco, c)[tracks] for c in ("px", "py", "pz"))),
        batch.n_events, rng)
    neutral = (reco.kind >= PHOTON) & overlay.is_pileup(reco.row)
    pt, eta, _ = pt_eta_phi(reco.px[neutral], reco.py[neutral], reco.pz[neutral])
    central = np.abs(eta) < JET_ABS_ETA_MAX
    rho = segment_sum(batch.event[reco.row[neutral]][central], pt[central],
                      batch.n_events) / (2 * np.pi * 2 * JET_ABS_ETA_MAX)
    return reference, rho


def process_batch(batch: ParticleBatch, rng: np.random.Generator, first_event: int,
                  model: detector.TrackingModel = detector.DETECTOR_MODELS["ideal"],
                  pileup_pool: pileup.MinBiasPool | None = None, mu: float = 0.0
                  ) -> JetTable:
    """Truth, pileup overlay (``mu`` > 0 events from ``pileup_pool`` per event), detector
    simulation, clustering and jet variables for one batch of events."""
    truth = find_truth(batch)
    overlay = None
    if pileup_pool is not None and mu > 0:
        batch, overlay = pileup.overlay(batch, pileup_pool, mu, rng)
    if model.conversions:
        batch, overlay = _convert_photons(batch, overlay, rng)
    reco = detector.reconstruct_particles(batch.pid, batch.status, batch.charge, batch.px,
                                          batch.py, batch.pz, batch.e, rng,
                                          np.hypot(batch.vx, batch.vy), model,
                                          None if overlay is None else overlay.removed)
    reference, rho = (None, None) if overlay is None else \
        _pileup_corrections(batch, reco, overlay, rng)
    jets, constituents = cluster_jets(batch, truth, reco, rho)
    n_jets = len(jets["pt"])
    ghosts = {name: (c.jet, c.row) for name, c in (
        ("b", constituents.of_kind(GHOST_B)), ("c", constituents.of_kind(GHOST_C)),
        ("parton", constituents.of_kind(GHOST_PARTON)))}
    n_tracks, charged, vertices, csv = charged_candidates(
        batch, jets, constituents.of_kind(TRACK), rng, model, overlay)
    n_neutrals, neutral = neutral_candidates(
        reco, jets, constituents.of_kind(PHOTON, NEUTRAL_HADRON), vertices, overlay,
        (n_tracks, charged), reference)
    npv = np.ones(batch.n_events) if overlay is None else overlay.npv.astype(np.float64)
    out = {
        "event": first_event + jets["event"],
        "jet_pt": jets["pt"], "jet_eta": jets["eta"], "jet_phi": jets["phi"],
        "jet_mass": invariant_mass(jets["e"], jets["px"], jets["py"], jets["pz"]),
        "jet_energy": jets["e"],
        "n_Cpfcand": n_tracks,
        "n_Npfcand": n_neutrals,
        "npv": npv[jets["event"]],
        **csv,
        **jet_labels(n_jets, batch, truth, ghosts),
    }
    sv_fields = {field: vertices[field] for field in GROUPS["sv"][1]}
    return JetTable(out, {"Cpfcan": (n_tracks, charged), "Npfcan": (n_neutrals, neutral),
                          "sv": (segment_count(vertices["jet"], n_jets), sv_fields)})


def _validate(process: str, n_events: int, seed: int, pthat_min: float, model: str,
              mpi: bool, mu: float) -> None:
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    if model not in detector.DETECTOR_MODELS:
        raise ValueError(f"detector must be one of {tuple(detector.DETECTOR_MODELS)}, got "
                         f"{model!r}")
    if isinstance(n_events, bool) or not isinstance(n_events, numbers.Integral) or n_events < 1:
        raise ValueError(f"n_events must be an integer >= 1, got {n_events!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (
            0 <= seed <= SEED_MAX):
        raise ValueError(f"seed must be an integer in 0..{SEED_MAX} (Pythia runs with "
                         f"Random:seed = seed + 1 <= 900000000), got {seed!r}")
    if not isinstance(mpi, bool):
        raise ValueError(f"mpi must be True or False, got {mpi!r}")
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not (
            np.isfinite(mu) and mu >= 0):
        raise ValueError(f"pileup must be a finite number >= 0 (mean pileup interactions), "
                         f"got {mu!r}")
    if process == "QCD" and not (isinstance(pthat_min, numbers.Real)
                                 and not isinstance(pthat_min, bool)
                                 and np.isfinite(pthat_min) and pthat_min > 0):
        raise ValueError(f"pthat_min must be a finite number > 0 (GeV), got {pthat_min!r}")


def generate_file(path: str | os.PathLike, process: str = "TT", n_events: int = 1000,
                  seed: int = 1, pthat_min: float = GenerationSettings.pthat_min,
                  progress: Callable[[int], object] | None = None,
                  detector_model: str = GenerationSettings.detector,
                  mpi: bool = GenerationSettings.mpi, pileup_mu: float = GenerationSettings.pileup,
                  pileup_pool: pileup.MinBiasPool | None = None) -> dict:
    """Generate ``n_events`` Pythia8 events of ``process`` and write the jets to ``path``.

    ``process`` is "TT" (ttbar) or "QCD" (hard QCD 2 -> 2 with pT-hat > ``pthat_min`` GeV).
    The file appears only when complete. ``progress`` is called with the number of newly
    generated events after every batch. ``detector_model`` names one of
    :data:`detector.DETECTOR_MODELS` ("realistic": tracking efficiency, IP tails,
    informative chi2, decays in flight; "ideal": none of them); ``mpi``: multi-parton
    interactions; ``pileup_mu``: mean number of pileup interactions overlaid from
    ``pileup_pool`` (if not given, a pool of :func:`pileup.standalone_pool_events` events is
    generated here).
    Returns {"n_events", "n_jets", "labels", "seconds"}.
    """
    _validate(process, n_events, seed, pthat_min, detector_model, mpi, pileup_mu)
    model = detector.DETECTOR_MODELS[detector_model]
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pileup_mu > 0 and pileup_pool is None:
        pileup_pool = pileup.generate_pool(pileup.standalone_pool_events(n_events),
                                           pileup.pool_seed(int(seed)), model.decays_in_flight)
    generator = EventGenerator(process, int(seed), pthat_min, model.decays_in_flight, mpi)
    rng = np.random.default_rng(int(seed))
    labels = dict.fromkeys(LABELS, 0)
    n_jets = 0
    with atomic_path(path) as temporary:
        with uproot.recreate(temporary, compression=uproot.LZ4(4)) as output:
            tree = output.mktree(TREE_NAME, tree_types(), counter_name=counter_name)
            pending: list[JetTable] = []
            for first_event in range(0, n_events, EVENTS_PER_BATCH):
                size = min(EVENTS_PER_BATCH, n_events - first_event)
                table = process_batch(generator.next_batch(size), rng, first_event, model,
                                      pileup_pool, float(pileup_mu))
                pending.append(table)
                n_jets += len(table)
                for label in LABELS:
                    labels[label] += int(table.jets[label].sum())
                if sum(map(len, pending)) >= JETS_PER_BASKET:
                    tree.extend(JetTable.concatenate(pending).to_branches())
                    pending = []
                if progress is not None:
                    progress(size)
            if pending:
                tree.extend(JetTable.concatenate(pending).to_branches())
    return {"n_events": n_events, "n_jets": n_jets, "labels": labels,
            "seconds": time.perf_counter() - start}
