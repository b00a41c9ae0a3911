"""Anti-kT clustering of many events at once with FastJet's awkward interface."""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import fastjet
import numpy as np

from .kinematics import offsets_from_counts

JET_R = 0.4
JET_PT_MIN = 15.0  # GeV
JET_ABS_ETA_MAX = 2.5

fastjet.ClusterSequenceAreaBase.set_fastjet_banner_stream(None)  # no banner on stdout
_JET_DEFINITION = fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R)


@dataclass(frozen=True)
class Clustering:
    """Jets of a batch and their constituents (rows of the clustering input)."""

    event: np.ndarray  # event of each jet
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    constituent_jet: np.ndarray  # jet index of each constituent
    constituent_input: np.ndarray  # input row of each constituent


def cluster(event: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray,
            n_events: int) -> Clustering:
    """Cluster inputs (rows grouped by ``event``) into anti-kT jets with pT > JET_PT_MIN."""
    counts = np.bincount(event, minlength=n_events)
    input_offsets = offsets_from_counts(counts)
    columns = [ak.contents.NumpyArray(np.ascontiguousarray(x)) for x in (px, py, pz, e)]
    events = ak.Array(ak.contents.ListOffsetArray(
        ak.index.Index64(input_offsets),
        ak.contents.RecordArray(columns, ["px", "py", "pz", "E"]),
    ))
    sequence = fastjet.ClusterSequence(events, _JET_DEFINITION)
    jets = sequence.inclusive_jets(JET_PT_MIN)
    index = sequence.constituent_index(JET_PT_MIN)

    jets_per_event = ak.to_numpy(ak.num(jets, axis=1))
    jet_event = np.repeat(np.arange(n_events), jets_per_event)
    flat_jets = ak.flatten(jets)
    n_constituents = ak.to_numpy(ak.flatten(ak.num(index, axis=2)))
    local = ak.to_numpy(ak.flatten(index, axis=None)).astype(np.int64)
    constituent_jet = np.repeat(np.arange(len(jet_event)), n_constituents)
    return Clustering(
        event=jet_event,
        px=ak.to_numpy(flat_jets.px), py=ak.to_numpy(flat_jets.py),
        pz=ak.to_numpy(flat_jets.pz), e=ak.to_numpy(flat_jets.E),
        constituent_jet=constituent_jet,
        constituent_input=local + input_offsets[jet_event[constituent_jet]],
    )
