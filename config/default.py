"""The original b-hive's ``default``: what ``--config default`` gives its users. Here the
offline Run 3 DeepJet inputs (``offline_run3``) with every input file in one process
``default`` (evaluated at 30 <= pT < 1000 GeV, abs(eta) < 2.5)."""

from config.offline_run3 import config as offline
from utils.config import Process

config = offline.replace(
    description="offline_run3 inputs, every file in one process 'default'",
    processes=(Process("default", "*", pt_range=(30, 1000), eta_range=(-2.5, 2.5)),),
)
