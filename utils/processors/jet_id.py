"""The CMS Run 3 jet ID of AK4 PUPPI jets, computed from the energy fractions and
multiplicities that NanoAOD stores (NanoAOD v15 no longer stores ``Jet_jetId``).

Criteria: JME "JetID13p6TeV" recommendation for Run 3 AK4 PUPPI jets (the one NanoAOD
v12-v14 ``Jet_jetId`` encodes, with the forward-region fix JME issued for the v12/v13
flag, cms-talk "Bug in the jetId flag in NanoV12 and NanoV13"); also what JME's
``jetid.json`` correctionlib files implement. With ``|eta|`` of the jet:

============================  ==========================================================
region                        tight
============================  ==========================================================
``|eta| <= 2.6``              neHEF < 0.99, neEmEF < 0.90, chM + neM > 1, chHEF > 0.01,
                              chM > 0
``2.6 < |eta| <= 2.7``        neHEF < 0.90, neEmEF < 0.99
``2.7 < |eta| <= 3.0``        neHEF < 0.99
``|eta| > 3.0``               neEmEF < 0.40, neM >= 2
============================  ==========================================================

tight lepton veto = tight and, for ``|eta| <= 2.7``, muEF < 0.80 and chEmEF < 0.80.
(neHEF, neEmEF, chHEF, chEmEF, muEF: ``Jet_neHEF``, ``Jet_neEmEF``, ``Jet_chHEF``,
``Jet_chEmEF``, ``Jet_muEF``; chM, neM: ``Jet_chMultiplicity``, ``Jet_neMultiplicity``.)
"""

from __future__ import annotations

import numpy as np

TIGHT, TIGHT_LEPTON_VETO = 2, 4  # the bits of NanoAOD's Jet_jetId


def run3_jet_id(eta: np.ndarray, ch_hef: np.ndarray, ne_hef: np.ndarray, ch_em_ef: np.ndarray,
                ne_em_ef: np.ndarray, mu_ef: np.ndarray, ch_multiplicity: np.ndarray,
                ne_multiplicity: np.ndarray) -> np.ndarray:
    """``Jet_jetId``-style flags (bit 1: tight, bit 2: tight lepton veto) of each jet, from
    flat (or equally shaped) arrays of the jet quantities (see the module docstring)."""
    arrays = [np.asarray(a) for a in (eta, ch_hef, ne_hef, ch_em_ef, ne_em_ef, mu_ef,
                                      ch_multiplicity, ne_multiplicity)]
    eta, ch_hef, ne_hef, ch_em_ef, ne_em_ef, mu_ef, ch_m, ne_m = arrays
    abs_eta = np.abs(eta)
    central = abs_eta <= 2.6
    transition = (abs_eta > 2.6) & (abs_eta <= 2.7)
    endcap = (abs_eta > 2.7) & (abs_eta <= 3.0)
    forward = abs_eta > 3.0
    tight = (
        (central & (ne_hef < 0.99) & (ne_em_ef < 0.90) & (ch_m + ne_m > 1) & (ch_hef > 0.01)
         & (ch_m > 0))
        | (transition & (ne_hef < 0.90) & (ne_em_ef < 0.99))
        | (endcap & (ne_hef < 0.99))
        | (forward & (ne_em_ef < 0.40) & (ne_m >= 2)))
    lepton_veto = tight & ((abs_eta > 2.7) | ((mu_ef < 0.80) & (ch_em_ef < 0.80)))
    return (TIGHT * tight + TIGHT_LEPTON_VETO * lepton_veto).astype(np.uint8)

