"""The peers the benchmarks measure our models against, configured to the same dimensions.

- :class:`PlainDeepJet`: DeepJet written the plain PyTorch way (``Conv1d`` 1x1 stacks over
  every slot, padding included, one dense ``nn.LSTM`` per group read backwards as the
  original Keras model does, the same dense head).
- :func:`weaver_part` / :func:`weaver_particle_net`: weaver-core's ParticleTransformer and
  ParticleNet (``pip install .[bench]``), or ``None`` when weaver-core is not installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from utils.models import InputSpec
from utils.models.deepjet import CONV_WIDTHS, LSTM_WIDTHS


def _conv_stack(in_channels: int, widths: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.BatchNorm1d(in_channels)]
    for width in widths:
        layers += [nn.Conv1d(in_channels, width, 1), nn.ReLU(), nn.BatchNorm1d(width),
                   nn.Dropout(dropout)]
        in_channels = width
    return nn.Sequential(*layers)


class PlainDeepJet(nn.Module):
    """DeepJet as a plain PyTorch model (see module doc); same widths as ours."""

    groups = ("cpf", "npf", "vtx")

    def __init__(self, spec: InputSpec, dropout: float = 0.1,
                 dense_widths: Sequence[int] = (200,) + (100,) * 7) -> None:
        super().__init__()
        n_global = spec.group("global").n_features
        self.global_norm = nn.BatchNorm1d(n_global)
        self.convs = nn.ModuleDict({g: _conv_stack(spec.group(g).n_features, CONV_WIDTHS[g],
                                                   dropout) for g in self.groups})
        self.lstms = nn.ModuleDict({g: nn.LSTM(CONV_WIDTHS[g][-1], LSTM_WIDTHS[g],
                                               batch_first=True) for g in self.groups})
        layers: list[nn.Module] = []
        width = n_global + sum(LSTM_WIDTHS[g] for g in self.groups)
        for out in dense_widths:
            layers += [nn.Linear(width, out), nn.ReLU(), nn.BatchNorm1d(out), nn.Dropout(dropout)]
            width = out
        self.dense = nn.Sequential(*layers, nn.Linear(width, spec.n_classes))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.global_norm(inputs["global"])]
        for g in self.groups:
            x = self.convs[g](inputs[g].transpose(1, 2)).transpose(1, 2)
            _, (hidden, _) = self.lstms[g](x.flip(1))  # go_backwards, as in the original
            parts.append(hidden[-1])
        return self.dense(torch.cat(parts, 1))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def weaver_available() -> bool:
    """True when weaver-core is installed (the ``bench`` extra)."""
    return importlib.util.find_spec("weaver") is not None


def _tokens(inputs: Mapping[str, torch.Tensor], groups: Sequence[str]) -> torch.Tensor:
    """Candidates of ``groups`` with their features zero-padded to a common width and
    concatenated: ``(B, sum of slots, max features)``."""
    width = max(inputs[g].shape[-1] for g in groups)
    return torch.cat([nn.functional.pad(inputs[g], (0, width - inputs[g].shape[-1]))
                      for g in groups], 1)


class WeaverPeer(nn.Module):
    """A weaver-core model fed our batches converted to its channel-first inputs (converted
    once, outside the timed steps: weaver's own loader delivers them in that form)."""

    def __init__(self, model: nn.Module, convert) -> None:
        super().__init__()
        self.model, self.convert = model, convert

    def forward(self, converted: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.model(*converted)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def weaver_part(spec: InputSpec, dim: int = 128, heads: int = 8, particle_blocks: int = 3,
                class_blocks: int = 2, pair_widths: Sequence[int] = (32, 32)) -> WeaverPeer:
    """weaver-core's ParticleTransformer at our ParticleTransformer's dimensions, on the
    cpf, npf and vtx candidates (features padded to one width; (px, py, pz, E) for the
    pair features)."""
    from weaver.nn.model.ParticleTransformer import ParticleTransformer

    groups = ("cpf", "npf", "vtx")
    width = max(spec.group(g).n_features for g in groups)
    model = ParticleTransformer(width, spec.n_classes, pair_input_dim=4,
                                embed_dims=(dim, dim), pair_embed_dims=tuple(pair_widths),
                                num_heads=heads, num_layers=particle_blocks,
                                num_cls_layers=class_blocks, fc_params=(), trim=True)

    def convert(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x = _tokens(inputs, groups)
        p4 = torch.cat([inputs[g][..., list(spec.group(g).four_vector)] for g in groups], 1)
        pt, eta, phi, energy = p4.unbind(-1)
        v = torch.stack((pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta),
                         energy), 1)
        mask = (x != 0).any(-1).unsqueeze(1)
        return x.transpose(1, 2).contiguous(), v * mask, mask.float()

    return WeaverPeer(model, convert)


def weaver_particle_net(spec: InputSpec, k: int = 16,
                        blocks: Sequence[Sequence[int]] = ((64, 64, 64), (128, 128, 128),
                                                           (256, 256, 256)),
                        fc_width: int = 256) -> WeaverPeer:
    """weaver-core's ParticleNet at our ParticleNet's dimensions on the cpf and npf
    candidates, points in (delta eta, delta phi) to the jet axis."""
    from weaver.nn.model.ParticleNet import ParticleNet

    from utils.models.layers import axis_offsets, candidate_four_vectors

    groups = ("cpf", "npf")
    width = max(spec.group(g).n_features for g in groups)
    model = ParticleNet(width, spec.n_classes, conv_params=[(k, tuple(b)) for b in blocks],
                        fc_params=[(fc_width, 0.1)], use_fusion=False)

    def convert(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        p4, mask = candidate_four_vectors(inputs, spec, groups)
        points = axis_offsets(p4, mask)
        x = _tokens(inputs, groups)
        return (points.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous(),
                mask.unsqueeze(1).float())

    return WeaverPeer(model, convert)
