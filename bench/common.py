"""What several benchmarks share: a synthetic TT + QCD dataset exported on the spot."""

from __future__ import annotations

from pathlib import Path

from utils.config import Config
from utils.dataset.export import export_dataset
from utils.progress import console
from utils.synthetic import write_synthetic_ntuple


def synthetic_dataset(config: Config, directory: Path, jets: int, chunk_size: int,
                      executor: str = "futures") -> tuple[Path, list[str]]:
    """Export ``jets`` synthetic jets (half TT, half QCD, seeds 0 and 1) of ``config`` into
    ``directory/dataset``; return the dataset directory and the two ntuples."""
    files = []
    for i, process in enumerate(("TT", "QCD")):
        path = directory / f"{process}_{i}.root"
        write_synthetic_ntuple(path, config, jets // 2, seed=i)
        files.append(str(path))
    dataset = directory / "dataset"
    dataset.mkdir()
    with console.capture():
        export_dataset(config, files, dataset, dataset, chunk_size=chunk_size,
                       executor=executor, workers=2)
    return dataset, files
