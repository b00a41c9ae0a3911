"""Built-in demo: offline_run3 inputs on the Pythia8 + toy-detector samples (GenerateSamplesTask).

Without --filelist, DatasetConstructorTask generates the samples below (~50k jets for TT+QCD).
A classic track-counting tagger (second-highest track Sip2dSig among the tracks passing the
CMS IP-tagger selection) is carried as an observer and drawn beside the trained models as a
reference.
"""

import awkward as ak

from config.offline_run3 import config as offline
from utils.config import Derived, Process

# the track selection of the CMS impact-parameter taggers (TrackCountingComputer): tracks
# close to the jet axis (removes most decay-in-flight and V0 tracks)
TC_JET_DISTANCE_MAX, TC_DELTA_R_MAX = 0.07, 0.3  # cm, dR(track, jet)


def second_highest(Cpfcan_BtagPf_trackSip2dSig, Cpfcan_BtagPf_trackJetDistVal,  # noqa: N803
                   Cpfcan_BtagPf_trackDeltaR):  # noqa: N803 (branch names)
    """Track counting: the second-highest 2D impact-parameter significance of the tracks
    passing the CMS IP-tagger selection (-99 if fewer than two)."""
    selected = (abs(Cpfcan_BtagPf_trackJetDistVal) < TC_JET_DISTANCE_MAX) & \
        (Cpfcan_BtagPf_trackDeltaR < TC_DELTA_R_MAX)
    ordered = ak.sort(Cpfcan_BtagPf_trackSip2dSig[selected], axis=1, ascending=False)
    return ak.fill_none(ak.pad_none(ordered, 2, clip=True)[:, 1], -99.0)


TRACK_COUNTING = Derived("TC_2ndTrackSip2dSig", ("Cpfcan_BtagPf_trackSip2dSig",
                                                 "Cpfcan_BtagPf_trackJetDistVal",
                                                 "Cpfcan_BtagPf_trackDeltaR"), second_highest)

config = offline.replace(
    description="offline_run3 inputs on built-in Pythia8 ttbar and QCD samples",
    processes=(
        Process("TT", "*/TT_*.root", pt_range=(30, 1000), eta_range=(-2.5, 2.5)),
        Process("QCD", "*/QCD_*.root", pt_range=(30, 1000), eta_range=(-2.5, 2.5)),
    ),
    observers=("jet_phi", "event", TRACK_COUNTING),
    reference_taggers={
        "BvsL": {"Track counting (2nd track Sip2dSig)": "TC_2ndTrackSip2dSig"},
        "BvsAll": {"Track counting (2nd track Sip2dSig)": "TC_2ndTrackSip2dSig"},
    },
    generated_samples={
        "TT": {"n_files": 4, "events_per_file": 1200},
        "QCD": {"n_files": 4, "events_per_file": 3000, "pthat_min": 30},
    },
    # ~53k jets in 11 files: training and validation are split by file
    chunk_size=5000,
)
