"""Datasets of the original b-hive (header-less LZ4 chunks): checked, imported, trained on.

The legacy datasets are written here as the original wrote them (functional spec 4.2/4.6):
one lz4 frame per file holding ``[n_rows, n_cols, rows...]``, ``processed_files.txt`` with
the absolute paths joined by newlines (none at the end), ``histogram.npy`` (float32 jets per
truth label, pT, eta) and ``weights.json`` ``{"chunk_size": [...], "sum_weight": [...]}``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lz4.frame
import numpy as np
import pytest

from utils.config import load_config
from utils.dataset.chunk_format import ChunkFormatError, read_chunk, read_legacy_shape
from utils.dataset.directory import DatasetDirectory
from utils.dataset.export import export_dataset
from utils.dataset.layout import ColumnLayout
from utils.dataset.legacy import LegacyDatasetError, import_legacy_dataset, width_text
from utils.dataset.reweighting import config_weights, jet_weights

CONFIG = "offline_run3"


def write_legacy(directory: Path, files: list[np.ndarray], dtype: str = "float32",
                 histogram: np.ndarray | None = None, weights_json: bool = True) -> Path:
    """A dataset directory in the original b-hive's layout."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, rows in enumerate(files):
        flat = np.concatenate([[len(rows), rows.shape[1]], rows.ravel()]).astype(dtype)
        path = directory / f"file_{k}.lz4"
        path.write_bytes(lz4.frame.compress(flat.tobytes()))
        paths.append(str(path.resolve()))
    (directory / "processed_files.txt").write_text("\n".join(paths))
    if histogram is not None:
        np.save(directory / "histogram.npy", histogram.astype(np.float32))
    if weights_json:
        (directory / "weights.json").write_text(json.dumps({
            "chunk_size": [len(r) for r in files],
            "sum_weight": [float(r[:, -1].sum()) for r in files]}))
    return directory


def random_rows(config, n: int, seed: int = 0) -> np.ndarray:
    """Rows in the original's layout of ``config``: features, process, one-hot truth, weight."""
    rng = np.random.default_rng(seed)
    layout = ColumnLayout.from_config(config)
    rows = rng.normal(size=(n, layout.n_columns)).astype(np.float32)
    rows[:, layout.column(config.pt_key)] = rng.uniform(config.pt_bins[0], 500, n)
    rows[:, layout.column(config.eta_key)] = rng.uniform(-2.4, 2.4, n)
    rows[:, layout.process_column] = rng.integers(0, len(config.processes), n)
    truth = layout.slice("truth")
    rows[:, truth] = np.eye(truth.stop - truth.start)[rng.integers(0, truth.stop - truth.start,
                                                                   n)]
    rows[:, layout.weight_column] = 0.25  # the original's weights: replaced on import
    return rows


@pytest.fixture(scope="module")
def exported(synthetic_files, tmp_path_factory):
    """The synthetic files exported here, and the same jets as an original b-hive dataset."""
    config = load_config(CONFIG)
    files, _ = synthetic_files
    out = tmp_path_factory.mktemp("ours")
    export_dataset(config, [str(f) for f in files], out, out, chunk_size=1500, seed=5,
                   executor="iterative")
    ours = DatasetDirectory(out)
    chunks = [read_chunk(p)[0].copy() for p in ours.files()]
    legacy = [rows.copy() for rows in chunks]
    for rows in legacy:
        rows[:, -1] = 0.25
    source = write_legacy(tmp_path_factory.mktemp("legacy") / "dataset", legacy,
                          histogram=ours.histogram())
    return config, ours, chunks, source


def run_import(config, source, tmp_path, **kwargs):
    out = tmp_path / "imported"
    out.mkdir(parents=True)
    summary = import_legacy_dataset(config, source, out, out, **kwargs)
    return summary, DatasetDirectory(out)


def test_import_keeps_every_jet_and_recomputes_the_weights(exported, tmp_path):
    config, ours, chunks, source = exported
    summary, imported = run_import(config, source, tmp_path, workers=2)
    assert imported.problems() == []
    files = imported.files()
    assert len(files) == len(chunks)
    layout = ColumnLayout.from_config(config)
    w = layout.weight_column
    for path, original in zip(files, chunks, strict=True):
        rows, file_layout = read_chunk(path)
        assert file_layout == layout
        np.testing.assert_array_equal(rows[:, :w], original[:, :w])  # jets in == jets out
        # the weights of this config's reweighting, as the export here computed them
        np.testing.assert_allclose(rows[:, w], original[:, w], rtol=1e-6)
    assert summary.counts["entries"] == summary.counts["selected"] == ours.n_jets
    np.testing.assert_array_equal(imported.histogram(), ours.histogram())
    info = imported.info()
    assert info["legacy_dataset"] == str(source.resolve())
    assert info["jets_per_label"] == ours.info()["jets_per_label"]
    assert set(imported.feature_scales()["groups"]) == {g.name for g in config.groups}


def test_bad_rows_dropped_and_counted(tmp_path):
    config = load_config(CONFIG)
    layout = ColumnLayout.from_config(config)
    rows = random_rows(config, 400, seed=1)
    truth = layout.slice("truth")
    rows[:10, 3] = np.nan                      # dropped: non-finite
    rows[10:15, truth] = 0                     # dropped: no truth flag
    rows[15:20, layout.column(config.pt_key)] = 5.0  # dropped: below the first pT edge
    rows[20:30, truth] = 0
    rows[20:30, truth.start + 5] = 1           # isC ...
    rows[20:30, truth.start + 8] = 1           # ... and isUD: the first flag (isC) is kept
    source = write_legacy(tmp_path / "legacy", [rows[:250], rows[250:]])
    summary, imported = run_import(config, source, tmp_path)
    c = summary.counts
    assert (c["entries"], c["non_finite"], c["no_label"], c["out_of_window"],
            c["multi_label"], c["selected"]) == (400, 10, 5, 5, 10, 380)
    out = np.concatenate([read_chunk(p)[0] for p in imported.files()])
    assert len(out) == imported.n_jets == 380
    np.testing.assert_array_equal(out[:, :truth.start], rows[20:, :truth.start])
    flags = out[:, truth]
    assert (flags.sum(axis=1) == 1).all()
    assert (flags[:10, 5] == 1).all()
    labels = np.argmax(rows[20:, truth], axis=1)
    weights = config_weights(config, imported.histogram()).tables
    np.testing.assert_allclose(out[:, layout.weight_column], jet_weights(
        weights, labels, out[:, layout.column(config.pt_key)],
        out[:, layout.column(config.eta_key)], config.pt_bins, config.eta_bins), rtol=1e-6)


def test_float16_dataset(tmp_path):
    """data_precision float16 (the original's LZ4FP16Processing): n_rows in the header is
    not exact in float16 (2051 is stored as 2052); the original's readers used only n_cols."""
    config = replace(load_config(CONFIG), storage_dtype="float16", name="offline_fp16")
    rows = random_rows(config, 2051, seed=2)
    source = write_legacy(tmp_path / "legacy", [rows], dtype="float16", weights_json=False)
    assert read_legacy_shape(source / "file_0.lz4", "float16") == (2052, rows.shape[1])
    _, imported = run_import(config, source, tmp_path)
    out, layout = read_chunk(imported.files()[0])
    assert layout.dtype == "float16" and out.dtype == np.float16 and len(out) == 2051
    np.testing.assert_array_equal(out[:, :layout.weight_column],
                                  rows.astype(np.float16)[:, :layout.weight_column])
    labels = np.argmax(rows[:, layout.slice("truth")], axis=1)
    assert imported.histogram().sum(axis=(1, 2)).tolist() == np.bincount(
        labels, minlength=len(config.truth_labels)).tolist()
    weights = config_weights(config, imported.histogram()).tables
    expected = jet_weights(weights, labels, out[:, layout.column(config.pt_key)],
                           out[:, layout.column(config.eta_key)], config.pt_bins,
                           config.eta_bins)
    np.testing.assert_allclose(out[:, layout.weight_column], expected, rtol=1e-3)
    # a full-size file (100,000 rows) has inf as its float16 row count: n_cols suffices
    flat = np.concatenate([[np.inf, rows.shape[1]], rows[:100].ravel()]).astype(np.float16)
    (source / "file_0.lz4").write_bytes(lz4.frame.compress(flat.tobytes()))
    assert read_legacy_shape(source / "file_0.lz4", "float16") == (-1, rows.shape[1])
    _, again = run_import(config, source, tmp_path / "again")
    assert again.n_jets == 100


@pytest.mark.parametrize("case, message", [
    ("width", r"file_0.lz4: 625 columns per jet, config 'offline_run3' gives global 15 \+ "
              r"cpf 25 x 16 \+ npf 25 x 6 \+ vtx 4 x 12 \+ process 1 \+ truth 11 \+ weight 1 "
              r"= 626 columns \(one fewer: a config with one feature more than the export.s, "
              r"or a per-chunk file of an unfinished export, which has no weight column\)"),
    ("truth", r"file_1.lz4: truth columns hold values other than 0/1"),
    ("process", r"file_0.lz4: 3 jets have process index \[-1.0, 2.0\], config "
                r"'offline_run3' has 2 process\(es\) \['TT', 'QCD'\]"),
    ("weights_json", r"file_1.lz4 holds 100 jets, the original's weights.json lists 99"),
    ("missing", r"processed_files.txt lists 1 file\(s\) that exist neither there nor in"),
    ("npz", r"lists file_0.npz: datasets of the original's structured \(npz\) processors"),
    ("ours", r"file_0.lz4 is a chunk of this framework already"),
    ("truncated", r"file_1.lz4: corrupt or truncated legacy LZ4 chunk"),
    ("listing", r"holds no processed_files.txt: not a \(finished\) dataset of the original"),
])
def test_bad_legacy_datasets_rejected_before_writing(tmp_path, case, message):
    config = load_config(CONFIG)
    layout = ColumnLayout.from_config(config)
    files = [random_rows(config, 100, seed=3), random_rows(config, 100, seed=4)]
    if case == "width":
        files = [f[:, :-1] for f in files]
    elif case == "truth":
        files[1][7, layout.slice("truth").start] = 0.5
    elif case == "process":
        files[0][:2, layout.process_column] = -1
        files[0][2, layout.process_column] = 2
    source = write_legacy(tmp_path / "legacy", files)
    if case == "weights_json":
        (source / "weights.json").write_text(json.dumps({"chunk_size": [100, 99],
                                                         "sum_weight": [1, 1]}))
    elif case == "missing":
        (source / "file_1.lz4").unlink()
    elif case == "npz":
        (source / "file_0.npz").write_bytes(b"")
        (source / "processed_files.txt").write_text(str(source / "file_0.npz"))
    elif case == "ours":
        from utils.dataset.chunk_format import write_chunk

        write_chunk(source / "file_0.lz4", files[0], layout)
    elif case == "truncated":
        data = (source / "file_1.lz4").read_bytes()
        (source / "file_1.lz4").write_bytes(data[:len(data) // 2])
    elif case == "listing":
        (source / "processed_files.txt").unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChunkFormatError if case == "truncated" else LegacyDatasetError,
                       match=message):
        import_legacy_dataset(config, source, out, out)
    assert list(out.iterdir()) == []  # nothing written


LAYOUT_YAML = """
bins_pt: [30, 100, 1000]
bins_eta: [-2.5, 0, 2.5]
processes: ["TT", "QCD"]
treename: "deepntuplizer/tree"
processor: "LZ4Processing"
global_features: [jet_pt, jet_eta, g1]
cpf_candidates: [c1, c2]
cpf_custom_features:
  - c3: "c1 * 2"
npf_candidates: [n1]
vtx_features: [v1, v2]
n_cpf_candidates: 3
n_npf_candidates: 2
n_vtx_features: 2
truths: [isB, isC, isUDS]
reference_flavour: isB
"""


def test_columns_follow_the_original_layout(tmp_path):
    """Rows built by hand in the original's order (functional spec 4.4/4.6): global, cpf
    candidate by candidate (plain features, then custom ones), npf, vtx, process, truth
    flags, weight. Every value must land on its feature and candidate."""
    path = tmp_path / "small.yml"
    path.write_text(LAYOUT_YAML)
    config = load_config(str(path))

    def row(jet: int, process: int, flag: int) -> list[float]:
        values = [50.0 + jet, 0.5, 1000 + jet]                       # jet_pt, jet_eta, g1
        for cand in range(3):                                       # cpf: c1, c2, c3
            values += [jet * 100 + 10 * cand + f for f in (1, 2, 3)]
        for cand in range(2):                                       # npf: n1
            values += [jet * 100 + 40 + cand]
        for cand in range(2):                                       # vtx: v1, v2
            values += [jet * 100 + 60 + 10 * cand + f for f in (1, 2)]
        return values + [process] + [float(i == flag) for i in range(3)] + [0.3]

    rows = np.array([row(j, j % 2, j % 3) for j in range(12)], dtype=np.float32)
    assert rows.shape[1] == 3 + 3 * 3 + 2 + 2 * 2 + 1 + 3 + 1
    source = write_legacy(tmp_path / "legacy", [rows])
    _, imported = run_import(config, source, tmp_path)
    out, layout = read_chunk(imported.files()[0])
    for j in range(12):
        assert out[j, layout.column("g1")] == 1000 + j
        for cand in range(3):
            for f, name in enumerate(("c1", "c2", "c3"), start=1):
                assert out[j, layout.column(name, cand)] == j * 100 + 10 * cand + f
        assert [out[j, layout.column("n1", c)] for c in range(2)] == [j * 100 + 40,
                                                                     j * 100 + 41]
        assert out[j, layout.column("v2", 1)] == j * 100 + 72
        assert out[j, layout.process_column] == j % 2
        assert np.argmax(out[j, layout.slice("truth")]) == j % 3
    assert width_text(layout) == ("global 3 + cpf 3 x 3 + npf 2 x 1 + vtx 2 x 2 + process 1 "
                                  "+ truth 3 + weight 1 = 23 columns")


def test_copy_reads_its_own_files_and_histogram_only_warns(tmp_path, capsys):
    """The original listed absolute paths: a copied dataset must read the copy's files, not
    the (still existing) ones it was copied from. A histogram.npy that does not fit the
    config is only a warning (the histogram is counted from the jets)."""
    config = load_config(CONFIG)
    first = write_legacy(tmp_path / "first", [random_rows(config, 80, seed=5)])
    copy = write_legacy(tmp_path / "copy", [random_rows(config, 60, seed=6)],
                        histogram=np.zeros((6, 3, 3)))
    (copy / "processed_files.txt").write_text(str(first / "file_0.lz4"))
    _, imported = run_import(config, copy, tmp_path)
    assert imported.n_jets == 60
    assert "histogram.npy has shape (6, 3, 3), config 'offline_run3' has 11 truth labels" \
        in capsys.readouterr().out


def test_file_missing_from_a_copy_is_read_from_its_listed_path_and_said(tmp_path, capsys):
    """A copy that lacks one of the listed files reads it from the absolute path the
    original listed, and says so (before: silently)."""
    config = load_config(CONFIG)
    first = write_legacy(tmp_path / "first", [random_rows(config, 80, seed=5),
                                              random_rows(config, 30, seed=7)])
    copy = write_legacy(tmp_path / "copy", [random_rows(config, 60, seed=6)])
    (copy / "processed_files.txt").write_text(f"{first / 'file_0.lz4'}\n{first / 'file_1.lz4'}")
    (copy / "weights.json").unlink()  # it counts the copy's one file
    _, imported = run_import(config, copy, tmp_path)
    assert imported.n_jets == 60 + 30
    assert f"lacks 1 of its 2 file(s); read from the paths processed_files.txt lists: " \
        f"{first / 'file_1.lz4'}" in " ".join(capsys.readouterr().out.split())


def test_config_with_observers_refused(tmp_path):
    config = load_config("demo")
    with pytest.raises(LegacyDatasetError, match="config 'demo' declares observers"):
        import_legacy_dataset(config, tmp_path, tmp_path, tmp_path)


def test_width_text_adds_up():
    for name in ("offline_run3", "part_run3", "part_run3_lt"):
        layout = ColumnLayout.from_config(load_config(name))
        text = width_text(layout)
        assert text.endswith(f"= {layout.n_columns} columns")
    assert width_text(ColumnLayout.from_config(load_config("part_run3"))) == (
        "global 15 + cpf 26 x 20 + npf 25 x 10 + vtx 5 x 15 + process 1 + truth 11 + "
        "weight 1 = 873 columns")  # the original's 872 plus its weight column


@pytest.mark.slow
def test_train_and_infer_on_a_legacy_dataset(exported, run_law):
    """Import (train and test), train one epoch, infer and draw the ROC curves: every test
    jet predicted once."""
    config, ours, chunks, source = exported
    test_source = write_legacy(source.parent / "test", [chunks[-1]])  # another dataset
    common = ("--config", CONFIG, "--dataset-version", "legacy_train",
              "--legacy-dataset", source, "--test-dataset-version", "legacy_test",
              "--test-legacy-dataset", test_source, "--training-version", "t1",
              "--model-name", "DeepJet", "--epochs", 1, "--batch-size", 256)
    run_law("ROCCurveTask", *common)
    data = run_law.data_path
    train = DatasetDirectory(data / "DatasetConstructorTask" / CONFIG / "legacy_train")
    assert train.n_jets == ours.n_jets and train.problems() == []
    metrics = np.load(data / "TrainingTask" / CONFIG / "legacy_train" / "t1" / "DeepJet" /
                      "epochs_1" / "nominal" / "training_metrics.npz")
    assert len(metrics["loss"]) == 1 and np.isfinite(metrics["loss"]).all()
    assert metrics["jets"][0] > 0
    inference = next((data / "InferenceTask").rglob("prediction.npy")).parent
    assert len(np.load(inference / "prediction.npy")) == len(chunks[-1]) < ours.n_jets
    # ROC curves of the imported test jets: BvsAll counts every jet in a process's window
    summary = json.loads(next((data / "ROCCurveTask").rglob("summary.json")).read_text())
    test = DatasetDirectory(data / "DatasetConstructorTask" / CONFIG / "legacy_test")
    rows = np.concatenate([read_chunk(p)[0] for p in test.files()])
    layout = ColumnLayout.from_config(config)
    pt, eta = rows[:, layout.column("jet_pt")], rows[:, layout.column("jet_eta")]
    for index, process in enumerate(config.processes):
        window = ((rows[:, layout.process_column] == index) & (pt >= process.pt_range[0]) &
                  (pt < process.pt_range[1]) & (eta >= process.eta_range[0]) &
                  (eta < process.eta_range[1]))
        entry = summary[process.name]["BvsAll"]["DeepJet"]
        assert entry["n_signal"] + entry["n_background"] == int(window.sum()) > 0
    # the same version with another legacy dataset: refused, naming the inputs
    other = write_legacy(source.parent / "other", [random_rows(config, 50)])
    proc = run_law("DatasetConstructorTask", "--config", CONFIG, "--dataset-version",
                   "legacy_train", "--legacy-dataset", other, check=False)
    assert proc.returncode != 0
    assert "inputs (--legacy-dataset)" in proc.stdout + proc.stderr
    assert str(other / "file_0.lz4") in proc.stdout + proc.stderr
    # the original's own directory as this version: refused, never "remove it"
    original = run_law.data_path / "DatasetConstructorTask" / CONFIG / "old"
    write_legacy(original, [random_rows(config, 50)])
    proc = run_law("DatasetConstructorTask", "--config", CONFIG, "--dataset-version", "old",
                   check=False)
    assert "holds a dataset of the original b-hive" in proc.stdout + proc.stderr
    assert "--remove-output" not in proc.stdout + proc.stderr
    proc = run_law("DatasetConstructorTask", "--config", CONFIG, "--dataset-version", "old",
                   "--legacy-dataset", original, check=False)
    assert "is the directory of this dataset version itself" in proc.stdout + proc.stderr
    both = run_law("DatasetConstructorTask", "--config", CONFIG, "--dataset-version", "x",
                   "--legacy-dataset", source, "--filelist", source / "processed_files.txt",
                   check=False)
    assert both.returncode != 0
    assert "give either --filelist" in both.stdout + both.stderr
