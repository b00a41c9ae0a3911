"""Generator truth: heavy-flavour hadrons, partons and the jet flavour labels.

Flavour is defined by ghost association (as CMS ``JetFlavourClustering``): the last B
hadrons, last C hadrons and last partons of the event are clustered together with the jet
constituents with momenta scaled by ``GHOST_SCALE``; a jet contains the ghosts that end up
among its constituents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .generator import ParticleBatch

LABELS = (
    "isB", "isBB", "isGBB", "isLeptonicB", "isLeptonicB_C",
    "isC", "isCC", "isGCC", "isUD", "isS", "isG",
)
B_LABELS = ("isB", "isBB", "isGBB", "isLeptonicB", "isLeptonicB_C")
C_LABELS = ("isC", "isCC", "isGCC")
LIGHT_LABELS = ("isUD", "isS", "isG")
GHOST_SCALE = 1e-18
DISPLACED_MIN_MM = 1e-3  # production vertices closer than 1 um to the PV count as prompt
PARTON_IDS = (1, 2, 3, 4, 5, 21)
_MAX_CHAIN = 50  # longest decay/shower chain followed upwards (safety bound only)


@dataclass(frozen=True)
class FlavourTruth:
    """Ghost candidates of a batch and per-row information needed for the labels."""

    b_hadrons: np.ndarray  # rows of the last B hadrons of each decay chain
    c_hadrons: np.ndarray  # rows of the last C hadrons (incl. those from B decays)
    partons: np.ndarray  # rows of the last partons before hadronisation
    semileptonic: np.ndarray  # per row: 1 e/mu among the B daughters, 2 via its C hadron
    splitting_gluon: np.ndarray  # per row: row of the g -> QQbar gluon of a B/C hadron, or -1


def _quark_digits(pid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    code = np.abs(pid) % 10000
    return code // 1000 % 10, code // 100 % 10, code // 10 % 10


def _climb(start: np.ndarray, mother1: np.ndarray, through: np.ndarray) -> np.ndarray:
    """Follow ``mother1`` from ``start`` while the mother satisfies ``through``."""
    row = start.copy()
    for _ in range(_MAX_CHAIN):
        up = through[mother1[row]]
        if not up.any():
            break
        row[up] = mother1[row[up]]
    return row


def find_truth(batch: ParticleBatch) -> FlavourTruth:
    """Identify the ghost hadrons/partons and their semileptonic and gluon-splitting history."""
    pid, mother1 = batch.pid, batch.mother1
    abs_id = np.abs(pid)
    nq1, nq2, nq3 = _quark_digits(pid)
    hadron = (abs_id > 100) & (abs_id < 9_000_000) & (nq2 > 0) & (nq3 > 0)
    meson = hadron & (nq1 == 0)

    def contains(flavour: int) -> np.ndarray:
        onium = meson & (nq2 == flavour) & (nq3 == flavour)
        return hadron & ((nq1 == flavour) | (nq2 == flavour) | (nq3 == flavour)) & ~onium

    has_b = contains(5)
    has_c = contains(4) & ~has_b

    def last_of_chain(family: np.ndarray) -> np.ndarray:
        has_family_daughter = np.zeros(len(pid), dtype=bool)
        has_family_daughter[mother1[family & family[mother1]]] = True
        return family & ~has_family_daughter

    last_b, last_c = last_of_chain(has_b), last_of_chain(has_c)

    is_parton = np.isin(abs_id, PARTON_IDS)
    parton_daughter = is_parton[batch.daughter1] | is_parton[batch.daughter2]
    last_parton = is_parton & ~parton_daughter

    # semileptonic B decays: e/mu directly from the B, or from a C hadron of its decay chain
    semileptonic = np.zeros(len(pid), dtype=np.int8)
    lepton = (abs_id == 11) | (abs_id == 13)
    lepton_mother = mother1[lepton]
    charm = np.unique(lepton_mother[last_c[lepton_mother]])
    bottom = mother1[_climb(charm, mother1, hadron & ~last_b)]
    semileptonic[bottom[last_b[bottom]]] = 2
    semileptonic[lepton_mother[last_b[lepton_mother]]] = 1

    splitting = np.full(len(pid), -1, dtype=np.int64)
    for flavour, family, last in ((5, has_b, last_b), (4, has_c, last_c)):
        rows = np.flatnonzero(last)
        splitting[rows] = _splitting_gluon(batch, rows, flavour, family, meson)

    return FlavourTruth(
        b_hadrons=np.flatnonzero(last_b), c_hadrons=np.flatnonzero(last_c),
        partons=np.flatnonzero(last_parton), semileptonic=semileptonic,
        splitting_gluon=splitting,
    )


def _splitting_gluon(batch: ParticleBatch, rows: np.ndarray, flavour: int,
                     family: np.ndarray, meson: np.ndarray) -> np.ndarray:
    """Row of the gluon whose g -> Q Qbar branching produced the heavy quark of each hadron.

    The hadron chain is followed up to the first hadron of the flavour (e.g. B* -> B), the
    heavy quark with the matching sign is searched among the string partons it was made of,
    its shower copies are followed back to its creation, and the creating parton is returned
    if it is a gluon with a single-mother Q Qbar branching (-1 otherwise).
    """
    pid, mother1, mother2 = batch.pid, batch.mother1, batch.mother2
    first = _climb(rows, mother1, family)
    # b mesons with positive id contain an anti-b quark, charm mesons a c quark (PDG)
    sign = np.sign(pid[first])
    if flavour == 5:
        sign = np.where(meson[first], -sign, sign)
    quark_id = flavour * sign
    low = mother1[first]
    high = np.maximum(mother2[first], low)

    n_rows = len(pid)
    quarks = np.flatnonzero(np.abs(pid) == flavour)
    keys = np.sort((pid[quarks] + 10) * n_rows + quarks)
    if len(keys) == 0:
        return np.full(len(rows), -1, dtype=np.int64)
    position = np.minimum(np.searchsorted(keys, (quark_id + 10) * n_rows + low), len(keys) - 1)
    match = keys[position]
    quark = match % n_rows
    found = (match // n_rows - 10 == quark_id) & (quark >= low) & (quark <= high)

    quark = np.where(found, quark, 0)
    for _ in range(_MAX_CHAIN):
        up = found & (pid[mother1[quark]] == pid[quark])
        if not up.any():
            break
        quark[up] = mother1[quark[up]]
    gluon = mother1[quark]
    event_start = batch.offsets[batch.event[quark]]
    single_mother = (mother2[quark] == event_start) | (mother2[quark] == gluon)
    pair = (np.abs(pid[batch.daughter1[gluon]]) == flavour) & (
        np.abs(pid[batch.daughter2[gluon]]) == flavour)
    ok = found & (pid[gluon] == 21) & single_mother & pair
    return np.where(ok, gluon, -1)


def decay_chain_origin(batch: ParticleBatch, rows: np.ndarray) -> np.ndarray:
    """For particles produced away from the primary vertex: the ancestor produced at the PV
    whose decay chain made them (e.g. the B hadron for the products of B -> D -> K pi);
    -1 for particles produced at the PV."""
    displaced = batch.vx**2 + batch.vy**2 + batch.vz**2 > DISPLACED_MIN_MM**2
    origin = batch.mother1[_climb(rows, batch.mother1, displaced)]
    return np.where(displaced[rows], origin, -1)


def jet_labels(n_jets: int, batch: ParticleBatch, truth: FlavourTruth,
               ghosts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mutually exclusive truth labels, hadron and parton flavour of each jet.

    ``ghosts`` maps "b", "c", "parton" to (jet index, particle row) of the associated ghosts.
    """
    jet_b, row_b = ghosts["b"]
    jet_c, row_c = ghosts["c"]
    jet_p, row_p = ghosts["parton"]
    n_b = np.bincount(jet_b, minlength=n_jets)
    n_c = np.bincount(jet_c, minlength=n_jets)

    def from_splitting(jets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        gluon = truth.splitting_gluon[rows]
        key = jets[gluon >= 0] * len(batch) + gluon[gluon >= 0]
        unique, count = np.unique(key, return_counts=True)
        flag = np.zeros(n_jets, dtype=bool)
        flag[unique[count >= 2] // len(batch)] = True
        return flag

    semileptonic = np.zeros(n_jets, dtype=np.int8)
    semileptonic[jet_b] = truth.semileptonic[row_b]  # only used for jets with one B hadron

    parton_flavour = np.zeros(n_jets, dtype=np.int32)
    if len(row_p):
        order = np.lexsort((-np.hypot(batch.px[row_p], batch.py[row_p]), jet_p))
        jets, first = np.unique(jet_p[order], return_index=True)
        parton_flavour[jets] = batch.pid[row_p[order][first]]

    single_b = n_b == 1
    multi_b = n_b >= 2
    gbb = from_splitting(jet_b, row_b)
    no_b = n_b == 0
    gcc = from_splitting(jet_c, row_c)
    light = no_b & (n_c == 0)
    abs_parton = np.abs(parton_flavour)
    labels = {
        "isB": single_b & (semileptonic == 0),
        "isBB": multi_b & ~gbb,
        "isGBB": multi_b & gbb,
        "isLeptonicB": single_b & (semileptonic == 1),
        "isLeptonicB_C": single_b & (semileptonic == 2),
        "isC": no_b & (n_c == 1),
        "isCC": no_b & (n_c >= 2) & ~gcc,
        "isGCC": no_b & (n_c >= 2) & gcc,
        "isUD": light & (abs_parton != 3) & (abs_parton != 21),
        "isS": light & (abs_parton == 3),
        "isG": light & (abs_parton == 21),
    }
    out = {name: flag.astype(np.int32) for name, flag in labels.items()}
    out["jet_hadronFlavour"] = np.select([n_b > 0, n_c > 0], [5, 4], 0).astype(np.int32)
    out["jet_partonFlavour"] = parton_flavour
    return out
