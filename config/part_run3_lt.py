"""``part_run3`` plus the lost tracks (``lt``, the original b-hive's ``part_run3_lt``, which
its README recommends for offline trainings): tracks not made into PF candidates, written by
the DeepNTuples ``ntuple_LT`` module as ``LT_*`` branches. ParticleTransformer takes them as
a fourth particle group (with their 4-vectors); the other models ignore the group.

LT branches (per jet, jagged; the first 5 are kept): ``LT_BtagPf_track{EtaRel, PtRel, PPar,
DeltaR, PParRatio, Sip2dVal, Sip2dSig, Sip3dVal, Sip3dSig, JetDistVal}``, ``LT_drminsv``,
``LT_charge``, ``LT_puppiw``, ``LT_chi2``, ``LT_quality``, ``LT_pt``, ``LT_eta``, ``LT_phi``,
``LT_e``.
"""

from config.part_run3 import config as part
from utils.config import FeatureGroup

LT_FEATURES = (
    "LT_BtagPf_trackEtaRel", "LT_BtagPf_trackPtRel", "LT_BtagPf_trackPPar",
    "LT_BtagPf_trackDeltaR", "LT_BtagPf_trackPParRatio", "LT_BtagPf_trackSip2dVal",
    "LT_BtagPf_trackSip2dSig", "LT_BtagPf_trackSip3dVal", "LT_BtagPf_trackSip3dSig",
    "LT_BtagPf_trackJetDistVal", "LT_drminsv", "LT_charge", "LT_puppiw", "LT_chi2",
    "LT_quality", "LT_pt", "LT_eta", "LT_phi", "LT_e",
)

config = part.replace(
    description="Offline Run 3 ParticleTransformer inputs with lost tracks (DeepNTuples)",
    groups=(*part.groups, FeatureGroup(
        "lt", LT_FEATURES, length=5, four_vector=("LT_pt", "LT_eta", "LT_phi", "LT_e"),
        integer_features=("LT_charge", "LT_quality"), default_values={"LT_drminsv": 0.4})),
)
