"""Checkpoints and device selection: the one place that saves and loads model states.

Checkpoints are written atomically (serialised in memory, then written through
:mod:`utils.io`, so a full disk is reported with the path and leaves no partial file) and
loaded with ``weights_only=True`` (tensors and plain data only, never arbitrary pickles).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.config import mapping_text
from utils.errors import BHiveError
from utils.io import write_bytes

CHECKPOINT = re.compile(r"model_(\d+)\.pt$")
BEST = "best_model.pt"

if TYPE_CHECKING:  # torch is imported where it is used: the tasks import this module
    import torch


class CheckpointError(BHiveError, ValueError):
    """A checkpoint does not fit the training or inference that wants to use it."""


def pick_device() -> torch.device:
    """CUDA if available at run time, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checkpoint_path(directory: str | Path, epochs: int) -> Path:
    """File of the state after ``epochs`` completed epochs (``model_<epochs-1>.pt``)."""
    return Path(directory) / f"model_{epochs - 1}.pt"


def completed_epochs(directory: str | Path) -> list[int]:
    """Epoch counts with a checkpoint in ``directory`` (ascending)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) + 1 for p in directory.glob("model_*.pt")
                  if (m := CHECKPOINT.search(p.name)))


def save_checkpoint(state: Mapping[str, Any], *paths: str | Path) -> None:
    """Write ``state`` atomically to each of ``paths``, in order (serialised once)."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    for path in paths:
        write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain data only)."""
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def check_classes(state: Mapping[str, Any], classes: Mapping[str, Sequence[str]],
                  path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint was made for exactly this
    label -> class mapping (class names, their order and their truth labels)."""
    wanted = {name: list(labels) for name, labels in classes.items()}
    stored = state.get("classes")
    if stored is None:  # checkpoints of older versions: only the class names are known
        names = state.get("class_names")
        if names is None or list(names) == list(wanted):
            return
        stored = {name: ["?"] for name in names}
    stored = {name: list(labels) for name, labels in stored.items()}
    if stored != wanted or list(stored) != list(wanted):
        raise CheckpointError(
            f"{path} was trained with the label -> class mapping {mapping_text(stored)}, but "
            f"the config now maps {mapping_text(wanted)}: its scores would be read as the "
            "wrong flavours. Use the config the model was trained with, or train a new "
            "--training-version")
