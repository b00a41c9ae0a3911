"""Adversarial attacks on the model inputs (law-free; the torch code is in
:mod:`utils.attacks.methods`, the per-feature scales in :mod:`utils.dataset.scales`).

This module is torch-free: it names the attacks, so that the settings and the command line
can offer them without importing torch.
"""

ATTACKS = ("nominal", "noise", "fgsm", "ngm", "pgd", "jetfool", "minimizer")
MULTI_STEP = ("pgd", "jetfool", "minimizer")  # the attacks that take --attack-iterations
ITERATIONS_DEFAULT = 10
