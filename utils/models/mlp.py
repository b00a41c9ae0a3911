"""A baseline on the per-jet (global) features only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from utils.models.base_model import BaseModel, InputSpec
from utils.models.layers import BatchNorm, dense_stack


class MLP(BaseModel):
    """Input BatchNorm on the raw global features, then ``Linear -> ReLU -> BatchNorm ->
    Dropout`` hidden layers and a linear output."""

    name = "MLP"
    input_groups = ("global",)

    def __init__(self, spec: InputSpec, widths: Sequence[int] = (128, 128, 64),
                 dropout: float = 0.1) -> None:
        super().__init__(spec)
        n_global = spec.group("global").n_features
        self.network = nn.Sequential(BatchNorm(n_global),
                                     dense_stack(n_global, widths, nn.ReLU, dropout),
                                     nn.Linear(widths[-1], spec.n_classes))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.network(inputs["global"])
