"""The model card (``model_card.json``): everything a CMSSW integration needs to feed an
exported graph and to read its outputs, with the versions and the validation of the export.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from utils.deploy import MODEL_FILE, OUTPUTS
from utils.evaluation.discriminants import available, formula

CARD_VERSION = 1
# the CMS NanoAOD branch suffix a b-hive discriminant corresponds to (Jet_btag<Tagger><suffix>)
CMS_NAMES = {"BvsAll": "B", "CvsL": "CvL", "CvsB": "CvB", "UDSvsG": "QvG"}
RAW_INPUTS = (
    "Raw feature values as stored in the dataset (the branches listed, in this order, with "
    "the derived features computed as defined): no scaling, no clipping, no log. The input "
    "normalisation is part of the graph. Candidate slots beyond a jet's candidates are "
    "all-zero; a slot whose features are all zero is treated as padding. Jets with a NaN "
    "or infinite input were excluded from training: replace such values or skip the jet.")


def _definition(function: Any) -> str:
    """Source text of a derived feature's function (best effort; its qualified name
    otherwise)."""
    try:
        return inspect.getsource(function).strip()
    except (OSError, TypeError):
        return getattr(function, "__qualname__", repr(function))


def _feature(group: Any, name: str, index: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "name": name}
    derived = {d.name: d for d in group.derived}
    if name in derived:
        entry.update(source="derived", uses=list(derived[name].uses),
                     definition=_definition(derived[name].function))
    else:
        entry["source"] = "branch"
    if name in group.integer_features:
        entry["integer"] = True
    if name in (group.default_values or {}):
        entry["default_value"] = group.default_values[name]
    return entry


def candidate_order(group: Any) -> str:
    """How the candidates of a config group are ordered before clipping to its length."""
    if group.sort_by is not None:
        return f"descending {group.sort_by}; the first {group.length} are kept"
    return f"as in the input ntuple (the ntupliser's order); the first {group.length} are kept"


def inputs_section(config: Any, groups: Sequence[str],
                   shapes: Mapping[str, Sequence[int | str]]) -> list[dict[str, Any]]:
    """One entry per graph input, in the order of the graph's inputs."""
    by_name = {g.name: g for g in config.groups}
    entries = []
    for name in groups:
        group = by_name[name]
        entry: dict[str, Any] = {
            "name": name, "dtype": "float32", "shape": list(shapes[name]),
            "per": "candidate" if group.is_candidates else "jet",
            "padding_value": 0.0,
            "features": [_feature(group, f, i) for i, f in enumerate(group.features)]}
        if group.is_candidates:
            dynamic = isinstance(shapes[name][1], str)
            entry.update(length=group.length, dynamic_length=dynamic,
                         order=candidate_order(group))
            if dynamic:  # ONNX Reshape cannot take an empty axis: one all-zero slot at least
                entry["min_length"] = 1
        if group.four_vector is not None:
            entry["four_vector"] = list(group.four_vector)
        entries.append(entry)
    return entries


def truth_definitions(config: Any) -> dict[str, str]:
    """Truth label -> its definition (a flag branch of the ntuple or a derived condition)."""
    out = {}
    for truth in config.truths:
        if isinstance(truth, str):
            out[truth] = f"branch {truth} != 0"
        else:
            out[truth.name] = _definition(truth.function)
    return out


def model_card(*, config: Any, model: Any, classes: Mapping[str, Sequence[str]],
               shapes: Mapping[str, Sequence[int | str]], onnx_model: bytes, opset: int,
               versions: Mapping[str, Any], training: Mapping[str, Any],
               validation: Mapping[str, Any]) -> dict[str, Any]:
    """The card of an exported tagger (see README "Deploying a tagger in CMSSW")."""
    import onnx
    import onnxruntime
    import torch

    class_names = list(classes)
    discriminants = {
        d.name: {"formula": formula(d, class_names),
                 "signal": list(d.signal), "background": list(d.background),
                 **({"cms_branch_suffix": CMS_NAMES[d.name]} if d.name in CMS_NAMES else {})}
        for d in available(class_names)}
    return {
        "card_version": CARD_VERSION,
        "model": {"name": model.name, "file": MODEL_FILE,
                  "sha256": hashlib.sha256(onnx_model).hexdigest(),
                  "bytes": len(onnx_model), "parameters": model.n_parameters()},
        "config": {"name": config.name, "fingerprint": config.fingerprint(),
                   "processor": config.processor, "tree_name": config.tree_name,
                   "pt_key": config.pt_key, "eta_key": config.eta_key},
        "preprocessing": RAW_INPUTS,
        "inputs": inputs_section(config, model.input_groups, shapes),
        "outputs": [
            {"name": OUTPUTS[0], "dtype": "float32", "shape": ["batch", len(class_names)],
             "classes": class_names, "description": "class probabilities (softmax in the "
             "graph), one column per class in this order"},
            {"name": OUTPUTS[1], "dtype": "float32", "shape": ["batch", len(class_names)],
             "classes": class_names, "description": "the logits before the softmax"}],
        "classes": {name: list(labels) for name, labels in classes.items()},
        "truth_labels": truth_definitions(config),
        "discriminants": discriminants,
        "export": {"opset": opset, "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                   "torch": torch.__version__, "onnx": onnx.__version__,
                   "onnxruntime": onnxruntime.__version__},
        "versions": dict(versions),
        "training": dict(training),
        "validation": dict(validation),
    }
