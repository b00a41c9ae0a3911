"""ParticleNet (Qu, Gouskos, PRD 101 (2020) 056019): dynamic graph CNN on the jet's charged and
neutral candidates treated as a point cloud in the (delta eta, delta phi) plane."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from utils.models.base_model import BaseModel, InputSpec
from utils.models.layers import (
    BatchNorm,
    CandidateEncoder,
    Linear,
    axis_offsets,
    candidate_four_vectors,
    encode_groups,
    exporting,
    fold_norm,
    foldable,
    identity,
    length_slices,
    linear,
    masked_mean,
    on_real,
    real_first,
)

# modelled cost of one more neighbour-search slice, in point pairs of a row (length_slices)
KNN_OVERHEAD = 2048.0


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``(B, N, N)`` of the points ``x`` ``(B, N, C)``."""
    squared = x.square().sum(-1)
    return (squared.unsqueeze(2) + squared.unsqueeze(1) - 2 * x @ x.transpose(1, 2)).clamp_min(0)


def knn(distances: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(B, N, k)`` of the ``k`` nearest other points and the validity of each edge.

    ``distances`` is ``(B, N, N)``. Padded points and the point itself are moved to infinite
    distance, so a real point only picks them when it has fewer than ``k`` real neighbours;
    such edges, and all edges of padded points, are invalid.
    """
    n = distances.shape[-1]
    far = ~mask.unsqueeze(1) | identity(n, mask.device)
    distances = distances.masked_fill(far, float("inf"))
    nearest = distances.topk(min(k, n - 1), dim=-1, largest=False)
    valid = nearest.values.isfinite() & mask.unsqueeze(-1)
    return nearest.indices, valid


class EdgeConv(nn.Module):
    """EdgeConv block: edge features ``[x_i, x_j - x_i]`` -> pointwise Linear/BN/ReLU stack ->
    mean over the valid neighbours, plus a Linear/BN shortcut of ``x_i``; then ReLU.

    Only valid edges (real point, real neighbour) are computed, as a packed list, so the
    batch statistics never see padding (for the ONNX export, eval mode computes all
    ``N * k`` edges of every jet and masks the invalid ones: the same function, because
    ONNX scatters cannot sum duplicate indices). The first layer acts on the concatenation as
    ``W_c x_i + W_d (x_j - x_i)``; both terms are computed per point and then gathered,
    which is the same function at a fraction of the cost. In eval mode each BatchNorm is
    folded into the Linear before it (:func:`fold_norm`; the first into both first-layer
    terms) where :func:`foldable` allows.
    """

    def __init__(self, in_features: int, widths: Sequence[int], k: int) -> None:
        super().__init__()
        self.k = k
        self.centre = Linear(in_features, widths[0])
        self.difference = Linear(in_features, widths[0], bias=False)
        layers: list[nn.Module] = [BatchNorm(widths[0]), nn.ReLU()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [Linear(a, b), BatchNorm(b), nn.ReLU()]
        self.edge_layers = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(Linear(in_features, widths[-1], bias=False),
                                      BatchNorm(widths[-1]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                coordinates: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, N, C)`` point features; neighbours are found in ``coordinates``."""
        b, n, _ = x.shape
        if exporting() and not self.training:
            idx, valid = knn(squared_distances(coordinates), mask, self.k)
            return self._dense(x, mask, idx, valid)
        centre, neighbour, count = self._edges(mask, coordinates)
        # eval: every BatchNorm folded into the Linear before it
        fold = not self.training and foldable(
            [self.centre, self.difference, *self.edge_layers, *self.shortcut])
        if fold:
            first_norm = self.edge_layers[0]
            diff = linear(x, fold_norm(self.difference, first_norm)[0], None)
            centre_term = linear(x, *fold_norm(self.centre, first_norm))
        else:
            diff, centre_term = self.difference(x), self.centre(x)
        diff = diff.reshape(b * n, -1)
        centre_term = centre_term.reshape(b * n, -1) - diff
        edges = self._edge_mlp(centre_term.index_select(0, centre)
                               + diff.index_select(0, neighbour), fold)
        summed = edges.new_zeros(b * n, edges.shape[-1]).index_add(0, centre, edges)
        mean = summed.view(b, n, -1) / count.view(b, n, 1).clamp_min(1)
        shortcut = on_real((lambda rows: linear(rows, *fold_norm(*self.shortcut))) if fold
                           else self.shortcut, x, mask)
        return torch.relu(mean + shortcut) * mask.unsqueeze(-1)

    def _edge_mlp(self, edges: torch.Tensor, fold: bool) -> torch.Tensor:
        """The edge layers on the packed edges; with ``fold`` (eval mode) the first
        BatchNorm is already folded into the centre and difference layers, each later one
        into the Linear before it: three passes over the edges fewer per layer."""
        if not fold:
            return self.edge_layers(edges)
        relu = torch.relu if torch.is_grad_enabled() else torch.relu_
        layers = list(self.edge_layers)
        edges = relu(edges)
        for dense, norm in zip(layers[2::3], layers[3::3], strict=True):
            edges = relu(linear(edges, *fold_norm(dense, norm)))
        return edges

    def _edges(self, mask: torch.Tensor, coordinates: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Valid edges as flat (jet, point) indices of centre and neighbour, and the valid
        neighbours per point ``(B * N,)``. Neighbours are searched on length-sorted slices
        of the batch, each over only the slots its longest jet fills (real points first)."""
        b, n = mask.shape
        centres, neighbours = [], []
        count = torch.zeros(b * n, dtype=torch.long, device=mask.device)
        for rows, longest in length_slices(mask.sum(1).cpu(), KNN_OVERHEAD, power=2):
            rows = rows.to(mask.device)
            idx, valid = knn(squared_distances(coordinates[rows, :longest]),
                             mask[rows, :longest], self.k)
            jet, point, slot = valid.nonzero(as_tuple=True)
            base = rows[jet] * n
            centres.append(base + point)
            neighbours.append(base + idx[jet, point, slot])
            count[(rows.unsqueeze(1) * n + torch.arange(longest, device=mask.device))
                  .reshape(-1)] = valid.sum(-1).reshape(-1)
        return torch.cat(centres), torch.cat(neighbours), count

    def _dense(self, x: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor,
               valid: torch.Tensor) -> torch.Tensor:
        """Eval-mode forward over all ``N * k`` edges, invalid ones masked (traceable)."""
        b, n, k = idx.shape
        diff = self.difference(x)
        centre_term = self.centre(x) - diff
        neighbours = diff.gather(1, idx.reshape(b, n * k, 1).expand(-1, -1, diff.shape[-1]))
        edges = self.edge_layers((centre_term.unsqueeze(2) + neighbours.view(b, n, k, -1))
                                 .reshape(b * n * k, -1)).view(b, n, k, -1)
        edges = torch.where(valid.unsqueeze(-1), edges, torch.zeros((), dtype=edges.dtype))
        mean = edges.sum(2) / valid.sum(-1, keepdim=True).clamp_min(1)
        return torch.relu(mean + on_real(self.shortcut, x, mask)) * mask.unsqueeze(-1)


class ParticleNet(BaseModel):
    """ParticleNet on the charged (cpf) and neutral (npf) candidates as one point cloud.

    Each candidate gets its (delta eta, delta phi) to the jet axis (the summed momentum of
    the real cpf and npf candidates) appended to its raw features; each group has its own
    input BatchNorm (real candidates only) and pointwise layer to a common width. The first
    EdgeConv block finds neighbours in the (delta eta, delta phi) plane, later blocks in
    their input feature space (dynamic graph). The mean over the real points, the mean of
    the embedded secondary vertices (no 4-vectors needed) and the normalised global
    features feed the fully connected head.
    """

    name = "ParticleNet"
    input_groups = ("global", "cpf", "npf", "vtx")
    needs_four_vectors = ("cpf", "npf")
    onnx_variable_length = False  # the traced graph has a fixed number of neighbours

    def __init__(self, spec: InputSpec, k: int = 16,
                 blocks: Sequence[Sequence[int]] = ((64, 64, 64), (128, 128, 128),
                                                    (256, 256, 256)),
                 input_width: int = 32, vertex_width: int = 32, fc_width: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(spec)
        self.point_groups = self.needs_four_vectors
        self.embeddings = nn.ModuleDict({
            g: CandidateEncoder(spec.group(g).n_features + 2, (input_width,))
            for g in self.point_groups})
        widths = [input_width] + [block[-1] for block in blocks]
        self.edge_convs = nn.ModuleList(EdgeConv(w, block, k)
                                        for w, block in zip(widths[:-1], blocks, strict=True))
        self.vertex_embedding = CandidateEncoder(spec.group("vtx").n_features,
                                                 (vertex_width, vertex_width))
        n_global = spec.group("global").n_features
        self.global_norm = BatchNorm(n_global)
        self.head = nn.Sequential(nn.Linear(widths[-1] + vertex_width + n_global, fc_width),
                                  nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(fc_width, spec.n_classes))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        p4, mask = candidate_four_vectors(inputs, self.spec, self.point_groups)
        offsets = axis_offsets(p4, mask)
        x = encode_groups(self.embeddings, inputs, offsets, mask)
        if not (exporting() and not self.training):  # real points first: slices cover them
            mask, x, offsets = real_first(mask, x, offsets)
        coordinates = offsets  # first graph in the (delta eta, delta phi) plane, then dynamic
        for block in self.edge_convs:
            x = block(x, mask, coordinates)
            coordinates = x
        vertices = self.padding_mask(inputs["vtx"])
        summary = (masked_mean(x, mask),
                   masked_mean(self.vertex_embedding(inputs["vtx"], vertices), vertices),
                   self.global_norm(inputs["global"]))
        return self.head(torch.cat(summary, 1))
