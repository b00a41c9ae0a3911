"""ONNX export of a tagger, validation of the graph against PyTorch, ONNX Runtime inference.

The graph takes one float32 tensor per input group of the model, named after the group,
with the raw, zero-padded features exactly as in the dataset (the input normalisation and
the padding masks are part of the network), and returns the class probabilities (softmax
inside the graph) and the logits. The TorchScript exporter is used (``dynamo=False``):
it writes the opset that is asked for and traces the models' export paths
(:func:`utils.models.layers.export_mode`), which compute the same function as the eval-mode
PyTorch code.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.deploy import (
    OUTPUTS,
    TOLERANCE,
    VALIDATION_BATCH_SIZES,
    DeployError,
    check_opset,
)
from utils.models import BaseModel
from utils.models.layers import export_mode

Inputs = Mapping[str, torch.Tensor]


class ExportedTagger(nn.Module):
    """What the ONNX graph computes: positional group tensors -> (probabilities, logits)."""

    def __init__(self, model: BaseModel) -> None:
        super().__init__()
        self.model = model
        self.groups = tuple(model.input_groups)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(dict(zip(self.groups, inputs, strict=True))).float()
        return torch.softmax(logits, dim=-1), logits


def input_shapes(model: BaseModel) -> dict[str, list[int | str]]:
    """Shape of each input of the graph: ``batch`` is dynamic, and so is the candidate axis
    ``n_<group>`` of models with ``onnx_variable_length`` (else the config length)."""
    shapes: dict[str, list[int | str]] = {}
    for name in model.input_groups:
        group = model.spec.group(name)
        if group.length is None:
            shapes[name] = ["batch", group.n_features]
        else:
            length = f"n_{name}" if model.onnx_variable_length else group.length
            shapes[name] = ["batch", length, group.n_features]
    return shapes


def _register_symbolics() -> None:
    """ONNX ops the TorchScript exporter lacks symbolics for (used by the jet axis and the
    ParT pair features): aten::sinh and aten::asinh are ONNX Sinh/Asinh (opset 9)."""
    for aten, op in (("sinh", "Sinh"), ("asinh", "Asinh")):
        torch.onnx.register_custom_op_symbolic(
            f"aten::{aten}", lambda g, x, _op=op: g.op(_op, x), 9)


def export_bytes(model: BaseModel, opset: int) -> bytes:
    """The eval-mode ``model`` as a checked ONNX graph (see the module docstring)."""
    import onnx

    check_opset(opset)
    model = model.eval()
    shapes = input_shapes(model)
    # trace at 2 (batch and candidates): a size-1 axis would be specialised by the tracer
    sample = tuple(torch.ones(*[2 if isinstance(d, str) else d for d in shapes[g]])
                   for g in model.input_groups)
    dynamic = {g: {i: d for i, d in enumerate(shape) if isinstance(d, str)}
               for g, shape in shapes.items()}
    dynamic.update({name: {0: "batch"} for name in OUTPUTS})
    _register_symbolics()
    buffer = io.BytesIO()
    with export_mode(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
        # an eval-mode wrapper: the exporter restores the wrapper's mode, and with it the model's
        torch.onnx.export(ExportedTagger(model).eval(), sample, buffer, dynamo=False,
                          input_names=list(model.input_groups), output_names=list(OUTPUTS),
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True)
    data = buffer.getvalue()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DeployError(f"onnx.checker rejects the exported {model.name}: {exc}") from exc
    return data


def providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers: CUDA first for ``device='cuda'`` when the installed
    onnxruntime has it (the onnxruntime-gpu build), always the CPU as fallback."""
    import onnxruntime as ort

    chosen = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        chosen.insert(0, "CUDAExecutionProvider")
    return chosen


def session(model: bytes | str | Path, threads: int = 0, device: str = "cpu") -> Any:
    """An ONNX Runtime session of the graph (``threads`` 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=providers(device))
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        where = "the exported graph" if isinstance(model, bytes) else str(model)
        raise DeployError(f"ONNX Runtime cannot load {where}: {exc}") from exc


class OnnxTagger:
    """An ONNX Runtime session with the call signature of a model: ``inputs -> logits``
    (used by :func:`utils.torch.inference.predict` for ``--backend onnx``). ``source`` is
    the graph file or its bytes."""

    def __init__(self, source: bytes | str | Path, model: BaseModel, threads: int = 0,
                 device: str = "cpu") -> None:
        where = "the exported graph" if isinstance(source, bytes) else str(source)
        self.name = model.name
        self.input_groups = tuple(model.input_groups)
        self.session = session(source, threads, device)
        names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(names) != sorted(self.input_groups) or outputs != list(OUTPUTS):
            raise DeployError(f"{where} takes inputs {names} and gives {outputs}, but "
                              f"{model.name} on this config needs inputs "
                              f"{list(self.input_groups)} and gives {list(OUTPUTS)}: export "
                              "it again with ExportONNXTask")

    def eval(self) -> OnnxTagger:
        return self

    def run(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, logits) of a batch."""
        feeds = {g: np.ascontiguousarray(inputs[g].detach().cpu().numpy(), dtype=np.float32)
                 for g in self.input_groups}
        probabilities, logits = self.session.run(list(OUTPUTS), feeds)
        return probabilities, logits

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        return torch.from_numpy(self.run(inputs)[1])

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())


# -- validation ---------------------------------------------------------------------------------
@dataclass
class Validation:
    """Largest |probability| differences between ONNX Runtime and PyTorch per check."""

    tolerance: float = TOLERANCE
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def max_difference(self) -> float:
        return max((c["max_abs_difference"] for c in self.checks.values()), default=0.0)

    @property
    def failures(self) -> list[str]:
        return [name for name, c in self.checks.items() if not c["passed"]]

    def as_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "max_abs_difference": self.max_difference,
                "passed": not self.failures, "checks": self.checks}

    def lines(self) -> list[str]:
        return [f"{name}: {c['jets']} jet(s), max |dp| = {c['max_abs_difference']:.2e}"
                + ("" if c["passed"] else f"  FAILED: {c.get('reason', 'difference')}")
                for name, c in self.checks.items()]


def _slice(inputs: Inputs, start: int, stop: int) -> dict[str, torch.Tensor]:
    return {g: x[start:stop] for g, x in inputs.items()}


def _compare(model: BaseModel, tagger: Any, batches: Sequence[Inputs], tolerance: float,
             normalised: bool = False) -> dict[str, Any]:
    """Max |dp| over ``batches``; with ``normalised``, also require finite probabilities
    summing to 1 in both backends (jets without candidates)."""
    worst, worst_logit, jets, reason = 0.0, 0.0, 0, ""
    for batch in batches:
        with torch.no_grad():
            logits = model(dict(batch)).float()
        expected = torch.softmax(logits, -1).numpy()
        probabilities, onnx_logits = tagger.run(batch)
        jets += len(expected)
        if not (np.isfinite(probabilities).all() and np.isfinite(expected).all()):
            reason = "non-finite probabilities"
            worst = math.inf
            continue
        worst = max(worst, float(np.abs(probabilities - expected).max()))
        worst_logit = max(worst_logit, float(np.abs(onnx_logits - logits.numpy()).max()))
        if normalised:
            sums = np.concatenate((probabilities.sum(1), expected.sum(1)))
            if np.abs(sums - 1).max() > tolerance:
                reason = f"probabilities sum to {sums.min():.6f}..{sums.max():.6f}"
    passed = not reason and worst <= tolerance
    if not passed and not reason:
        reason = f"difference {worst:.2e} > {tolerance:g}"
    check = {"jets": jets, "batches": len(batches), "max_abs_difference": worst,
             "max_abs_logit_difference": worst_logit, "passed": passed}
    if reason and not passed:
        check["reason"] = reason
    return check


def validate(model: BaseModel, tagger: Any, jets: Inputs, tolerance: float = TOLERANCE,
             batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES) -> Validation:
    """Compare ``tagger`` (an ONNX graph, see :class:`OnnxTagger`) with the eval-mode
    ``model`` on the real ``jets`` at each batch size (32 single jets, 8 batches of 7, one
    batch of up to 1024; at most all ``jets``), on a jet whose inputs are all zero and on
    jets with their candidates removed (probabilities must be finite and sum to 1), and,
    for graphs with dynamic candidate axes, on the jets cut to half the candidate slots
    plus 3 padding slots and to one slot."""
    model = model.eval()
    jets = {g: jets[g] for g in model.input_groups}
    n = len(next(iter(jets.values())))
    if n == 0:
        raise DeployError("no jets to validate the exported graph with")
    report = Validation(tolerance)
    for size in batch_sizes:
        size = min(size, n)
        count = max(1, min({1: 32, 7: 8}.get(size, 1), n // size))
        report.checks[f"batch {size}"] = _compare(
            model, tagger, [_slice(jets, i * size, (i + 1) * size) for i in range(count)],
            tolerance)
    zeros = {g: torch.zeros_like(x[:1]) for g, x in jets.items()}
    report.checks["all-zero jet"] = _compare(model, tagger, [zeros], tolerance, True)
    head = _slice(jets, 0, min(7, n))
    no_candidates = {g: torch.zeros_like(x) if x.ndim == 3 else x for g, x in head.items()}
    if any(x.ndim == 3 for x in head.values()):
        report.checks["no candidates"] = _compare(model, tagger, [no_candidates], tolerance,
                                                  True)
        if model.onnx_variable_length:
            other = [{g: torch.cat((x[:, :max(1, x.shape[1] // 2)],
                                    x.new_zeros(x.shape[0], 3, x.shape[2])), 1)
                      if x.ndim == 3 else x for g, x in head.items()},
                     {g: x[:, :1] if x.ndim == 3 else x for g, x in head.items()}]
            report.checks["other candidate lengths"] = _compare(model, tagger, other,
                                                                tolerance)
    return report

