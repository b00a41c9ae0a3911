"""Coffea processor for event-level CMS NanoAOD and BTV PFNano (``Events`` tree).

Jets are flattened from the jagged jet collection (default ``Jet``); every per-jet column of
the config is provided from the event data, vectorised over the whole chunk:

- ``Jet_<field>``: the jet's own value;
- any other per-event branch (``event``, ``PV_npvs``, ...): broadcast to the event's jets;
- ``Cpfcan_<field>`` / ``Npfcan_<field>`` (PFNano): the jet's charged / neutral PF
  candidates (``PFCands_charge`` != 0 / == 0), collected through ``JetPFCands_jetIdx`` and
  ``JetPFCands_pFCandsIdx``; ``<field>`` is looked up as ``PFCands_<field>``, then as
  ``JetPFCands_<field>`` (per jet-candidate pair, e.g. ``btagSip3dSig``);
- ``sv_<field>``: the event's secondary vertices (``SV_<field>``) within
  ``processor_options["sv_delta_r"]`` (default 0.4) of the jet axis, ordered by
  decreasing ``SV_dlenSig``.

- ``<jets>_jetId`` where the file has none (NanoAOD v15): the Run 3 tight / tight-lepton-veto
  flags computed from the jet's energy fractions and multiplicities
  (:func:`utils.processors.jet_id.run3_jet_id`), with the stored flag's bits.

Candidate groups are then sorted (``FeatureGroup.sort_by``), padded and clipped exactly as
for flat jet tuples. Truth labels are config conditions, e.g. on ``Jet_hadronFlavour``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import awkward as ak
import numpy as np

from utils.config import Config
from utils.processors.jet_id import run3_jet_id
from utils.processors.jet_tuple import ColumnError, JetTupleProcessor

CANDIDATE_PREFIXES = {"Cpfcan_": "charged", "Npfcan_": "neutral"}
SV_PREFIX = "sv_"
MAX_JETS_PER_EVENT = 10_000  # jet id = entry * MAX_JETS_PER_EVENT + jet index
# what the jet ID is computed from where a file has no <jets>_jetId (the run3_jet_id order)
JET_ID_INPUTS = ("eta", "chHEF", "neHEF", "chEmEF", "neEmEF", "muEF", "chMultiplicity",
                 "neMultiplicity")


def _options(config: Config) -> dict[str, Any]:
    options = {"jets": "Jet", "sv_delta_r": 0.4}
    options.update(config.processor_options or {})
    return options


def _source_branches(config: Config, name: str, available: set[str]) -> list[str] | None:
    """Real branches behind a per-jet column name (None if it cannot be provided)."""
    jets = _options(config)["jets"]
    for prefix in CANDIDATE_PREFIXES:
        if name.startswith(prefix):
            field = name[len(prefix):]
            links = ["JetPFCands_jetIdx", "JetPFCands_pFCandsIdx", "PFCands_charge"]
            for branch in (f"PFCands_{field}", f"JetPFCands_{field}"):
                if branch in available:
                    return links + [branch]
            return None
    if name.startswith(SV_PREFIX):
        field = name[len(SV_PREFIX):]
        needed = [f"SV_{field}", "SV_eta", "SV_phi", "SV_dlenSig", f"{jets}_eta", f"{jets}_phi"]
        return needed if all(b in available for b in needed) else None
    if name == f"{jets}_jetId" and name not in available:
        needed = [f"{jets}_{field}" for field in JET_ID_INPUTS]
        return needed if all(b in available for b in needed) else None
    return [name] if name in available else None


def _delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def _flat(values: Any) -> np.ndarray:
    return ak.to_numpy(ak.flatten(values, axis=1))


class NanoAODProcessor(JetTupleProcessor):
    """Jets of NanoAOD / PFNano events as rows (see module doc)."""

    rows_per_entry = 10  # a generous number of jets per event, to size the staging

    @classmethod
    def source_branches(cls, config: Config, available: set[str]
                        ) -> tuple[list[str], list[str]]:
        needed, missing = [], []
        for name in config.branches:
            sources = _source_branches(config, name, available)
            if sources is not None:
                needed += sources
            elif name.startswith(tuple(CANDIDATE_PREFIXES)):
                field = name.split("_", 1)[1]
                missing.append(f"{name} (from PFCands_{field} or JetPFCands_{field}, "
                               "with JetPFCands_jetIdx/pFCandsIdx and PFCands_charge)")
            elif name.startswith(SV_PREFIX):
                missing.append(f"{name} (from SV_{name[len(SV_PREFIX):]}, SV_eta, SV_phi, "
                               "SV_dlenSig)")
            elif name == f"{_options(config)['jets']}_jetId":
                prefix = _options(config)["jets"]
                missing.append(f"{name} (or, to compute it, "
                               f"{', '.join(f'{prefix}_{f}' for f in JET_ID_INPUTS)})")
            else:
                missing.append(name)
        return list(dict.fromkeys(needed)), missing

    @classmethod
    def preload_branches(cls, config: Config) -> list[str] | None:
        return None

    def jet_source(self, events: Any) -> tuple[int, Callable[[str], Any], np.ndarray]:
        jets = _options(self.config)["jets"]
        n_jets_event = ak.to_numpy(ak.num(events[f"{jets}_pt"], axis=1)).astype(np.int64)
        if n_jets_event.max(initial=0) >= MAX_JETS_PER_EVENT:
            raise ColumnError(f"an event has {n_jets_event.max()} jets; at most "
                              f"{MAX_JETS_PER_EVENT - 1} are supported")
        n = int(n_jets_event.sum())
        event_of_jet = np.repeat(np.arange(len(n_jets_event)), n_jets_event)
        jet_offset = np.cumsum(n_jets_event) - n_jets_event
        local_jet = np.arange(n) - jet_offset[event_of_jet]
        entry = np.asarray(events.metadata["entrystart"], dtype=np.int64) + event_of_jet
        jet_id = entry * MAX_JETS_PER_EVENT + local_jet
        groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def candidate_links(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(jet index, PFCands index, JetPFCands index) of the kind's pairs, by jet."""
            if kind not in groups:
                jet_idx = events["JetPFCands_jetIdx"]
                pair_event = np.repeat(np.arange(len(n_jets_event)),
                                       ak.to_numpy(ak.num(jet_idx, axis=1)))
                local = _flat(jet_idx).astype(np.int64)
                pf_counts = ak.to_numpy(ak.num(events["PFCands_charge"], axis=1))
                pf_offset = np.cumsum(pf_counts) - pf_counts
                pf = pf_offset[pair_event] + _flat(events["JetPFCands_pFCandsIdx"]).astype(
                    np.int64)
                valid = (local >= 0) & (local < n_jets_event[pair_event])
                charge = _flat(events["PFCands_charge"])[np.where(valid, pf, 0)]
                valid &= (charge != 0) if kind == "charged" else (charge == 0)
                pairs = np.flatnonzero(valid)
                jet = jet_offset[pair_event[pairs]] + local[pairs]
                order = np.argsort(jet, kind="stable")
                groups[kind] = (jet[order], pf[pairs][order], pairs[order])
            return groups[kind]

        def sv_links() -> tuple[np.ndarray, np.ndarray]:
            """(jet index, SV index) of the SVs within delta R of each jet, by jet and
            decreasing SV_dlenSig."""
            if "sv" not in groups:
                n_sv = ak.to_numpy(ak.num(events["SV_eta"], axis=1)).astype(np.int64)
                sv_offset = np.cumsum(n_sv) - n_sv
                pairs = n_jets_event * n_sv
                pair_event = np.repeat(np.arange(len(n_sv)), pairs)
                local = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
                per = n_sv[pair_event]
                jet = jet_offset[pair_event] + local // np.maximum(per, 1)
                sv = sv_offset[pair_event] + local % np.maximum(per, 1)
                jet_eta, jet_phi = _flat(events[f"{jets}_eta"]), _flat(events[f"{jets}_phi"])
                sv_eta, sv_phi = _flat(events["SV_eta"]), _flat(events["SV_phi"])
                dr = np.hypot(jet_eta[jet] - sv_eta[sv], _delta_phi(jet_phi[jet], sv_phi[sv]))
                keep = dr < _options(self.config)["sv_delta_r"]
                jet, sv = jet[keep], sv[keep]
                order = np.lexsort((-_flat(events["SV_dlenSig"])[sv], jet))
                groups["sv"] = (jet[order], sv[order], np.empty(0))
            return groups["sv"][:2]

        def column(name: str) -> Any:
            for prefix, kind in CANDIDATE_PREFIXES.items():
                if name.startswith(prefix):
                    field = name[len(prefix):]
                    jet, pf, pair = candidate_links(kind)
                    branch = f"PFCands_{field}"
                    if branch in events.fields:
                        values = _flat(events[branch])[pf]
                    else:
                        values = _flat(events[f"JetPFCands_{field}"])[pair]
                    return ak.unflatten(values, np.bincount(jet, minlength=n))
            if name.startswith(SV_PREFIX):
                jet, sv = sv_links()
                values = _flat(events[f"SV_{name[len(SV_PREFIX):]}"])[sv]
                return ak.unflatten(values, np.bincount(jet, minlength=n))
            if name == f"{jets}_jetId" and name not in events.fields:
                return run3_jet_id(*(_flat(events[f"{jets}_{field}"])
                                     for field in JET_ID_INPUTS))
            values = events[name]
            if name.startswith(f"{jets}_"):
                return _flat(values)
            per_event = ak.to_numpy(values)
            if per_event.ndim != 1:
                raise ColumnError(f"branch '{name}' is neither a {jets}_ column nor one value "
                                  "per event")
            return per_event[event_of_jet]

        return n, column, jet_id
