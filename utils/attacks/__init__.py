"""Adversarial attacks on the model inputs (law-free; the torch code is in
:mod:`utils.attacks.methods`, the per-feature scales in :mod:`utils.dataset.scales`).

This module is torch-free: it names the attacks, so that the settings and the command line
can offer them without importing torch.
"""

from typing import Any

ATTACKS = ("nominal", "noise", "fgsm", "ngm", "pgd", "jetfool", "minimizer")
MULTI_STEP = ("pgd", "jetfool", "minimizer")  # the attacks that take --attack-iterations
ITERATIONS_DEFAULT = 10


def kept_nominal(config: Any, reduce: bool) -> dict[str, Any]:
    """``{group: {"frozen": features, "defaults": {feature: value}}}``: what attacks keep at
    its nominal value in ``config`` (recorded by the tasks, so an edit is noticed)."""
    return {g.name: {"frozen": list(g.frozen_features(reduce)),
                     "defaults": dict(g.default_values) if reduce else {}}
            for g in config.groups}
