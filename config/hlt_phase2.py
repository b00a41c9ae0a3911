"""Phase-2 HLT DeepJet inputs: the Run 3 HLT inputs with the extended tracker, |eta| < 4."""

import dataclasses

from config.hlt_run3 import config as hlt_run3

config = hlt_run3.replace(
    description="Phase-2 HLT DeepJet inputs (|eta| < 4.0)",
    eta_bins=(-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5,
              3.0, 3.5, 4.0),
    processes=tuple(dataclasses.replace(p, eta_range=(-4.0, 4.0)) for p in hlt_run3.processes),
)
