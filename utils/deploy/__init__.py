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
