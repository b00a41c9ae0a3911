"""Export a trained checkpoint: ONNX graph, validation on the training's validation jets,
model card (law-free; ``ExportONNXTask`` calls :func:`run_export`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from utils.config import label_to_class
from utils.deploy import CARD_FILE, MODEL_FILE, TOLERANCE, VALIDATION_BATCH_SIZES, DeployError
from utils.deploy.card import model_card
from utils.deploy.onnx import OnnxTagger, export_bytes, input_shapes, validate
from utils.io import file_sha256, write_bytes, write_json
from utils.progress import console
from utils.settings import TrainSettings
from utils.torch.data import VALIDATION, ChunkDataset, dataset_shards, split_shards
from utils.torch.inference import load_trained_model
from utils.torch.run import build_model


def validation_jets(dataset_dir: Path, groups: tuple[str, ...], classes: Mapping[str, Any],
                    settings: TrainSettings, n_jets: int = max(VALIDATION_BATCH_SIZES)
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """Up to ``n_jets`` jets of the training's validation files (in file order) and where
    they come from."""
    shards = dataset_shards(dataset_dir)
    n_train = settings.n_train_files if settings.n_train_files > 0 else None
    split = split_shards(shards, settings.train_val_split, n_train)
    data = ChunkDataset(split.validation, groups, label_to_class(classes), n_jets, VALIDATION,
                        seed=settings.seed)
    batch = next(iter(data), None)
    if batch is None:
        raise DeployError(f"the validation files of {dataset_dir} hold no jet of the "
                          "model's classes to validate the export with")
    files = sorted({s.path.name for s in split.validation})
    return {g: x.float() for g, x in batch["inputs"].items()}, \
        f"{len(batch['target'])} jets of the validation files {files}"


def run_export(config: Any, model_name: str, checkpoint: Path, dataset_dir: Path,
               out_dir: Path, settings: TrainSettings, opset: int,
               versions: Mapping[str, Any], tolerance: float = TOLERANCE,
               threads: int = 0) -> dict[str, Any]:
    """Write ``model.onnx`` and ``model_card.json`` of ``checkpoint`` into ``out_dir`` once
    the graph passes :func:`utils.deploy.onnx.validate`; return the card. Raises
    :class:`DeployError` (nothing written) when it does not."""
    model, classes = build_model(config, model_name)
    state = load_trained_model(model, checkpoint, torch.device("cpu"), classes)
    model.eval()
    console.print(f"[bold]ONNX export[/] of {model_name} ({checkpoint.name}, epoch "
                  f"{state.get('epoch', '?')}) at opset {opset}")
    data = export_bytes(model, opset)
    jets, source = validation_jets(dataset_dir, tuple(model.input_groups), classes, settings)
    tagger = OnnxTagger(data, model, threads)
    report = validate(model, tagger, jets, tolerance)
    for line in report.lines():
        console.print(f"  {line}")
    if report.failures:
        raise DeployError(
            f"the ONNX graph of {model_name} ({checkpoint}) differs from PyTorch by up to "
            f"{report.max_difference:.2e} in the probabilities (tolerance {tolerance:g}) in "
            f"{report.failures}; nothing was written")
    console.print(f"  onnxruntime agrees with PyTorch to {report.max_difference:.1e} "
                  f"(tolerance {tolerance:g}) on {source}")
    validation = {**report.as_dict(), "jets": source}
    training = {"checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
                "epoch": state.get("epoch"),
                "best_validation_loss": state.get("best_loss"),
                "parameters": dict(state.get("parameters", {}))}
    card = model_card(config=config, model=model, classes=classes,
                      shapes=input_shapes(model), onnx_model=data, opset=opset,
                      versions=versions, training=training, validation=validation)
    write_bytes(out_dir / MODEL_FILE, data)
    write_json(out_dir / CARD_FILE, card)
    return card

