"""Batched inference of a trained model on an exported dataset (no sampling, file order),
optionally under an adversarial attack (``--test-attack``)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.allocator import keep_freed_memory
from utils.attacks.methods import Attack, AttackError, ChangeMonitor, attack_mode
from utils.config import label_to_class
from utils.io import atomic_path, file_sha256, save_npy, write_json
from utils.models import BaseModel
from utils.progress import console, progress_bar
from utils.settings import AttackSettings, TrainSettings
from utils.torch.checkpoint import CheckpointError, check_classes, load_checkpoint, pick_device
from utils.torch.data import TEST, ChunkDataset, dataset_shards, make_loader


@torch.no_grad()
def predict(model: BaseModel | Any, data: ChunkDataset, device: torch.device, workers: int = 0,
            description: str = "Inference", autocast_dtype: torch.dtype | None = None,
            quiet: bool = False, attack: Attack | None = None,
            monitor: ChangeMonitor | None = None) -> dict[str, np.ndarray]:
    """Logits and the batch fields (target, weight, process, truth_label, columns) of every
    jet of ``data`` in the order the dataset yields them; with ``attack``, of the attacked
    inputs (the changes are added to ``monitor``). ``model`` may also be an
    :class:`utils.deploy.onnx.OnnxTagger`."""
    model.eval()
    attacking = attack is not None and attack.active

    def logits_of(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        context = contextlib.nullcontext() if autocast_dtype is None else \
            torch.autocast(device.type, dtype=autocast_dtype)
        with context:
            return model(inputs).float()

    out: dict[str, list[np.ndarray]] = {}
    with progress_bar(description, total=data.expected_batches(), unit="batches",
                      disable=quiet) as bar, \
            attack_mode(model) if attacking else contextlib.nullcontext():
        for batch in make_loader(data, workers):
            inputs = {k: v.to(device, non_blocking=True).float()
                      for k, v in batch["inputs"].items()}
            if attacking:
                target = batch["target"].to(device, non_blocking=True)
                moved = attack(logits_of, inputs, target)
                if monitor is not None:
                    monitor.add(inputs, moved)
                inputs = moved
            logits = logits_of(inputs)
            out.setdefault("logits", []).append(logits.cpu().numpy())
            for key in ("target", "weight", "process", "truth_label", "columns", "observers"):
                if key in batch:
                    out.setdefault(key, []).append(batch[key].numpy())
            bar.advance()
    return {k: np.concatenate(v) for k, v in out.items()}


def load_trained_model(model: BaseModel, checkpoint: str | Path, device: torch.device,
                       classes: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Load weights into ``model`` (weights_only), refusing a checkpoint trained with
    another label -> class mapping than ``classes``."""
    state = load_checkpoint(checkpoint, device)
    check_classes(state, classes, checkpoint)
    model.load_state_dict(state["model_state_dict"])
    return state


def run_inference(config: Any, model: BaseModel, classes: dict[str, tuple[str, ...]],
                  checkpoint: Path, test_dir: Path, out_dir: Path,
                  batch_size: int = TrainSettings.batch_size,
                  workers: int = TrainSettings.n_threads,
                  precision: str = TrainSettings.training_precision,
                  device: torch.device | None = None, verbose: bool = False,
                  attack_settings: AttackSettings | None = None,
                  dataset_dir: Path | None = None, seed: int = 0,
                  onnx_model: Path | None = None) -> dict[str, np.ndarray]:
    """Predict every jet of the test dataset (under the test attack ``attack_settings`` if
    given) and write the inference outputs to ``out_dir``: prediction.npy (logits),
    truth.npy (class index), kinematics.npy (pt, eta), process.npy, output.root,
    classes.json (class names and their truth labels), inference_time.json and attack.json
    (the attack and the changes it made per input group, in units of the feature scales).

    Attack magnitudes are in units of the training dataset's feature spreads: those kept in
    the checkpoint, else (checkpoints written before) those of ``dataset_dir``.

    With ``onnx_model`` (an ExportONNXTask graph, its model card next to it) onnxruntime
    predicts instead of ``model``, which only names the inputs."""
    keep_freed_memory()
    torch.manual_seed(seed)  # the noise attack is reproducible
    device = device or pick_device()
    tagger: Any = model
    if onnx_model is not None:
        from utils.deploy import check_backend

        check_backend("onnx", attack_settings is not None and attack_settings.active)
        tagger = onnx_tagger(onnx_model, model, classes, checkpoint, device)
        state: dict[str, Any] = {}
    else:
        model.to(device)
        state = load_trained_model(model, checkpoint, device, classes)
    attack = None
    if attack_settings is not None and attack_settings.active:
        from utils.dataset.scales import dataset_scales

        scales = state.get("feature_scales")
        if scales is None and attack_settings.individual_factors:
            if dataset_dir is None:
                raise AttackError(f"{checkpoint} holds no feature scales; give the training "
                                  "dataset directory")
            scales = dataset_scales(dataset_dir, config)
        attack = Attack.from_config(attack_settings, config, model.input_groups, scales)
    shards = dataset_shards(test_dir)
    data = ChunkDataset(shards, model.input_groups, label_to_class(classes), batch_size, TEST,
                        precision=precision, columns=(config.pt_key, config.eta_key),
                        observers=True)
    where = f"onnxruntime ({', '.join(tagger.providers)})" if onnx_model is not None else \
        str(device)
    console.print(f"[bold]Inference[/] of {model.name} on {len(shards)} file(s) "
                  f"({sum(s.rows for s in shards):,} jets) on {where}")
    monitor = ChangeMonitor(attack) if attack is not None and attack.active else None
    if monitor is not None:
        console.print(f"  under attack: {attack.settings.describe()}")
    start = time.perf_counter()
    pred = predict(tagger, data, device, workers, attack=attack, monitor=monitor)
    seconds = time.perf_counter() - start
    n = len(pred["logits"])
    save = {
        "prediction.npy": pred["logits"].astype(np.float32),
        "truth.npy": pred["target"].astype(np.int64),
        "kinematics.npy": pred["columns"][:, :2].astype(np.float32),
        "process.npy": pred["process"].astype(np.int64),
    }
    writing = time.perf_counter()
    for name, array in save.items():
        save_npy(out_dir / name, array)
    write_output_root(out_dir / "output.root", config, list(classes), pred)
    write_json(out_dir / "classes.json", {
        "model_name": model.name, "config": config.name, "class_names": list(classes),
        "classes": {k: list(v) for k, v in classes.items()}})
    timing = {"seconds": seconds, "jets": n, "jets_per_second": n / max(seconds, 1e-9),
              "device": where, "batch_size": batch_size,
              "backend": "torch" if onnx_model is None else "onnx"}
    write_json(out_dir / "inference_time.json", timing)
    settings = attack.settings if attack is not None else None
    write_json(out_dir / "attack.json", {
        "attack": settings.name if settings is not None else "nominal",
        "settings": dataclasses.asdict(settings) if settings is not None else {},
        "kept_nominal": attack.record() if attack is not None else {},
        "changes": monitor.report() if monitor is not None else {}})
    console.print(f"  {n:,} jets in {seconds:.1f} s ({timing['jets_per_second']:,.0f} jets/s)")
    if verbose:
        per_class = np.bincount(pred["target"], minlength=len(classes))
        console.print("  test jets per class: " + ", ".join(
            f"{name} {k:,}" for name, k in zip(classes, per_class, strict=True)))
        console.print(f"  time: prediction {seconds:.1f} s, writing the outputs "
                      f"{time.perf_counter() - writing:.1f} s")
    return pred


def onnx_tagger(path: Path, model: BaseModel, classes: Mapping[str, Sequence[str]],
                checkpoint: Path, device: torch.device) -> Any:
    """The exported graph at ``path`` in onnxruntime (CUDA when ``device`` is), refused when
    its model card records another label -> class mapping than ``classes`` or another
    checkpoint than ``checkpoint`` (e.g. one replaced by --extend-training since)."""
    import json

    from utils.deploy import CARD_FILE, DeployError
    from utils.deploy.onnx import OnnxTagger

    card = path.with_name(CARD_FILE)
    try:
        recorded = json.loads(card.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{card}: cannot read the model card of {path}: {exc}") from None
    check_classes({"classes": recorded.get("classes")}, classes, path)
    exported_from = recorded.get("training", {}).get("checkpoint_sha256")
    if exported_from is not None and exported_from != file_sha256(checkpoint):
        raise DeployError(
            f"{path} was exported from another {checkpoint.name} than the one in "
            f"{checkpoint.parent} (the training changed since): export it again, e.g. with "
            "ExportONNXTask ... --remove-output 0,a,y")
    return OnnxTagger(path, model, device=device.type)


def write_output_root(path: Path, config: Any, class_names: Sequence[str],
                      pred: dict[str, np.ndarray]) -> None:
    """A flat TTree ``tree``: jet pt/eta, process, prob_<class>, truth flags and the
    observers (float64; integer-valued observers such as event numbers as int64)."""
    import uproot

    from utils.evaluation.discriminants import softmax

    probs = softmax(pred["logits"])
    labels = pred["truth_label"]
    branches: dict[str, np.ndarray] = {
        "jet_pt": pred["columns"][:, 0].astype(np.float32),
        "jet_eta": pred["columns"][:, 1].astype(np.float32),
        "process": pred["process"].astype(np.int32),
        "truth_class": pred["target"].astype(np.int32),
    }
    for i, name in enumerate(class_names):
        branches[f"prob_{name}"] = probs[:, i].astype(np.float32)
    for i, label in enumerate(config.truth_labels):
        branches[label] = (labels == i).astype(np.int32)
    for j, name in enumerate(config.observer_names):
        values = pred["observers"][:, j]
        integral = np.all(values == np.round(values)) and np.abs(values).max(initial=0) < 2**62
        branches[name] = values.astype(np.int64) if integral else values
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        f.mktree("tree", {k: v.dtype for k, v in branches.items()})
        f["tree"].extend(branches)
