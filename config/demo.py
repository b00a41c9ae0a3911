"""Built-in demo: offline_run3 inputs on the Pythia8 + toy-detector samples (GenerateSamplesTask).

Without --filelist, DatasetConstructorTask generates the samples below (~50k jets for TT+QCD).
"""

from config.offline_run3 import config as offline
from utils.config import Process

config = offline.replace(
    description="offline_run3 inputs on built-in Pythia8 ttbar and QCD samples",
    processes=(
        Process("TT", "*/TT_*.root", pt_range=(30, 1000), eta_range=(-2.5, 2.5)),
        Process("QCD", "*/QCD_*.root", pt_range=(30, 1000), eta_range=(-2.5, 2.5)),
    ),
    generated_samples={
        "TT": {"n_files": 4, "events_per_file": 1200},
        "QCD": {"n_files": 4, "events_per_file": 4000, "pthat_min": 30},
    },
)
