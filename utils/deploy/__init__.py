"""Deployment of trained taggers: the ONNX export, its validation against PyTorch, ONNX
Runtime inference (:mod:`utils.deploy.onnx`) and the model card that tells CMSSW how to
feed the graph (:mod:`utils.deploy.card`).

This module is torch-free: the tasks read these constants while luigi schedules.
"""

from __future__ import annotations

from utils.errors import BHiveError

OPSET_DEFAULT = 17  # ONNX Runtime >= 1.12 (CMSSW 13+) runs it; the TorchScript exporter's range
OPSET_RANGE = (14, 20)  # 14: LSTM with batch-first layout; 20: the exporter's newest
TOLERANCE = 1e-5  # largest allowed |probability(ONNX) - probability(PyTorch)|
VALIDATION_BATCH_SIZES = (1, 7, 1024)
OUTPUTS = ("probabilities", "logits")
BACKENDS = ("torch", "onnx")
CHECKPOINTS = ("best", "last")
MODEL_FILE = "model.onnx"
CARD_FILE = "model_card.json"


class DeployError(BHiveError, ValueError):
    """The export or its validation failed, or an exported graph does not fit."""


def check_opset(opset: int) -> None:
    """Raise :class:`DeployError` unless the exporter supports ``opset``."""
    low, high = OPSET_RANGE
    if not low <= opset <= high:
        raise DeployError(f"--opset {opset} is not supported: choose {low} to {high}")


def check_backend(backend: str, attacking: bool) -> None:
    """Raise :class:`DeployError` for a backend that cannot do what is asked."""
    if backend not in BACKENDS:
        raise DeployError(f"--backend {backend!r} is unknown; backends are {list(BACKENDS)}")
    if backend == "onnx" and attacking:
        raise DeployError("--backend onnx cannot run --test-attack: attacks need the input "
                          "gradients of the PyTorch model; use --backend torch")
