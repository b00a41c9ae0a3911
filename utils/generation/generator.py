"""Pythia8 set-up and extraction of flat particle arrays from batches of events."""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np
import pythia8mc

from .kinematics import offsets_from_counts

PROCESSES = ("TT", "QCD")
SEED_MAX = 899_999_999  # Pythia seeds are 1..900000000; the user seed s is used as s + 1

COMMON_SETTINGS = (
    "Beams:idA = 2212",
    "Beams:idB = 2212",
    "Beams:eCM = 13600.",
    # only particles with c*tau0 < tau0Max decay: TAU0_MAX_MM (the CMS generator convention:
    # B and C hadrons and tau leptons decay, K0S, Lambda, hyperons, pi+-, K+- are stable) or,
    # with decays in flight, TAU0_MAX_IN_FLIGHT_MM (the strange hadrons decay too, as Geant4
    # decays them in CMS)
    "ParticleDecays:limitTau0 = on",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)
TAU0_MAX_MM = 10.0
# c*tau0 up to 100 mm: K0S (26.8), Lambda (78.9), Sigma+- (24.0, 44.3), Xi (87.1, 49.1) and
# Omega (24.6) decay; pi+- (7,800), K+- (3,700) and K0L (15,300) stay stable
TAU0_MAX_IN_FLIGHT_MM = 100.0
PROCESS_SETTINGS = {
    "TT": ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on"),
    "QCD": ("HardQCD:all = on",),
    "MinBias": ("SoftQCD:nonDiffractive = on",),  # the pileup pool (MPI always on)
}


@dataclass(frozen=True)
class ParticleBatch:
    """Flat particle record of a batch of events.

    Row ``i`` is a particle; every index (mother/daughter) is a *global* row of the batch.
    Pythia's index 0 of each event (the "system" entry, id 90) is kept, so a mother or
    daughter index of 0 points to that event's system row, which is neither a hadron nor a
    parton. Rows added after generation (pileup, conversion electrons: :meth:`append`)
    follow all of Pythia's rows; ``offsets`` describes Pythia's rows only. Momenta in GeV,
    production vertices in mm.
    """

    n_events: int
    offsets: np.ndarray  # first row of each event, length n_events + 1
    event: np.ndarray  # event of each row (0..n_events-1)
    pid: np.ndarray
    status: np.ndarray
    mother1: np.ndarray
    mother2: np.ndarray
    daughter1: np.ndarray
    daughter2: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vz: np.ndarray
    charge: np.ndarray

    def __len__(self) -> int:
        return len(self.pid)

    def append(self, event: np.ndarray, mother: np.ndarray, pid: np.ndarray,
               charge: np.ndarray, momentum: tuple[np.ndarray, ...],
               vertex: tuple[np.ndarray, ...], status: np.ndarray | None = None
               ) -> ParticleBatch:
        """This batch with new final-state rows (status 1) after the existing ones; both
        mother indices are ``mother`` (global rows), the daughters 0. ``status`` replaces
        the status of the existing rows (e.g. to retire converted photons)."""
        n = len(event)
        zero = np.zeros(n, dtype=np.int64)

        def join(old: np.ndarray, new: np.ndarray) -> np.ndarray:
            return np.concatenate([old, np.asarray(new, dtype=old.dtype)])

        return ParticleBatch(
            n_events=self.n_events, offsets=self.offsets, event=join(self.event, event),
            pid=join(self.pid, pid),
            status=join(self.status if status is None else status, np.ones(n, np.int64)),
            mother1=join(self.mother1, mother), mother2=join(self.mother2, mother),
            daughter1=join(self.daughter1, zero), daughter2=join(self.daughter2, zero),
            px=join(self.px, momentum[0]), py=join(self.py, momentum[1]),
            pz=join(self.pz, momentum[2]), e=join(self.e, momentum[3]),
            vx=join(self.vx, vertex[0]), vy=join(self.vy, vertex[1]),
            vz=join(self.vz, vertex[2]), charge=join(self.charge, charge))


class EventGenerator:
    """A configured Pythia8 instance delivering :class:`ParticleBatch` objects."""

    def __init__(self, process: str, seed: int, pthat_min: float,
                 decays_in_flight: bool = False, mpi: bool = True) -> None:
        """Configure Pythia for ``process`` (TT, QCD or MinBias); ``pthat_min`` (GeV) is used
        for QCD only; ``decays_in_flight``: long-lived strange hadrons decay
        (``TAU0_MAX_IN_FLIGHT_MM``); ``mpi``: multi-parton interactions (the underlying
        event; always on for MinBias)."""
        self._pythia = pythia8mc.Pythia("", False)
        tau0_max = TAU0_MAX_IN_FLIGHT_MM if decays_in_flight else TAU0_MAX_MM
        settings = [*COMMON_SETTINGS, f"ParticleDecays:tau0Max = {tau0_max!r}",
                    f"Random:seed = {seed + 1}", *PROCESS_SETTINGS[process]]
        if not mpi and process != "MinBias":
            settings.append("PartonLevel:MPI = off")
        if process == "QCD":
            settings.append(f"PhaseSpace:pTHatMin = {float(pthat_min)!r}")
        for line in settings:
            if not self._pythia.readString(line):
                raise RuntimeError(f"Pythia rejected the setting {line!r}")
        if not self._pythia.init():
            raise RuntimeError("Pythia initialisation failed")
        self._charge_ids = np.zeros(0, dtype=np.int64)
        self._charge_values = np.zeros(0, dtype=np.float64)

    def next_batch(self, n_events: int) -> ParticleBatch:
        """Generate ``n_events`` events (failed events are retried by Pythia)."""
        prt = self._pythia.nextBatch(n_events, "skip")["prt"]
        counts = ak.to_numpy(ak.num(prt)).astype(np.int64)
        offsets = offsets_from_counts(counts)
        event = np.repeat(np.arange(len(counts)), counts)
        start = offsets[:-1][event]
        flat = ak.flatten(prt)

        def index(field: str) -> np.ndarray:
            return ak.to_numpy(flat[field]).astype(np.int64) + start

        def number(array: ak.Array) -> np.ndarray:
            return ak.to_numpy(ak.fill_none(array, 0.0)).astype(np.float64)

        pid = ak.to_numpy(flat["id"]).astype(np.int64)
        status = ak.to_numpy(flat["status"]).astype(np.int64)
        return ParticleBatch(
            n_events=len(counts), offsets=offsets, event=event, pid=pid, status=status,
            mother1=index("mother1"), mother2=index("mother2"),
            daughter1=index("daughter1"), daughter2=index("daughter2"),
            px=number(flat["p", "px"]), py=number(flat["p", "py"]),
            pz=number(flat["p", "pz"]), e=number(flat["p", "e"]),
            vx=number(flat["vProd", "px"]), vy=number(flat["vProd", "py"]),
            vz=number(flat["vProd", "pz"]),
            charge=self._charges(pid, status > 0),
        )

    def _charges(self, pid: np.ndarray, needed: np.ndarray) -> np.ndarray:
        """Electric charge of the ``needed`` particles from Pythia's particle data (0 else)."""
        wanted = np.unique(pid[needed])
        new = np.setdiff1d(wanted, self._charge_ids, assume_unique=True)
        if len(new):
            data = self._pythia.particleData
            ids = np.concatenate([self._charge_ids, new])
            values = np.concatenate([self._charge_values, [data.charge(int(i)) for i in new]])
            order = np.argsort(ids)
            self._charge_ids, self._charge_values = ids[order], values[order]
        charge = np.zeros(len(pid))
        position = np.searchsorted(self._charge_ids, pid[needed])
        charge[needed] = self._charge_values[position]
        return charge
