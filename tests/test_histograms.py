"""Input feature histograms of exported datasets: binning, counts, save/load, figures."""

from __future__ import annotations

import numpy as np
import pytest

from utils.dataset.chunk_format import read_chunk, write_chunk
from utils.dataset.histograms import FeatureHistograms, feature_edges, histogram_dataset
from utils.dataset.layout import FEATURES, PROCESS, TRUTH, WEIGHT, Block, ColumnLayout
from utils.plotting.histograms import plot_feature_histograms, safe_name

LAYOUT = ColumnLayout((
    Block("global", FEATURES, ("pt", "ntrk", "const")),
    Block("cand", FEATURES, ("a", "q"), length=3),
    Block("process", PROCESS, ("process",)),
    Block("truth", TRUTH, ("isB", "isC", "isUD")),
    Block("weight", WEIGHT, ("weight",)),
))
N = 400


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """Two chunk files (250 + 150 jets) with known content; returns (files, columns)."""
    rng = np.random.default_rng(0)
    pt = rng.uniform(20, 500, N)
    ntrk = rng.integers(0, 13, N).astype(float)
    n_real = rng.integers(0, 4, N)
    a = rng.normal(2.0, 1.0, (N, 3))
    q = rng.choice([-1.0, 1.0], (N, 3))
    a[5, 0] = 0.0  # a real candidate with one zero feature stays real
    real = np.arange(3)[None, :] < n_real[:, None]
    a, q = np.where(real, a, 0.0), np.where(real, q, 0.0)
    process = rng.integers(0, 2, N)
    label = rng.integers(0, 3, N)
    rows = np.zeros((N, LAYOUT.n_columns))
    rows[:, :3] = np.c_[pt, ntrk, np.full(N, 7.0)]
    rows[:, LAYOUT.slice("cand")] = np.stack([a, q], axis=2).reshape(N, 6)
    rows[:, LAYOUT.process_column] = process
    rows[np.arange(N), LAYOUT.slice("truth").start + label] = 1.0
    rows[:, LAYOUT.weight_column] = 1.0
    directory = tmp_path_factory.mktemp("chunks")
    files = [directory / "file_0.lz4", directory / "file_1.lz4"]
    write_chunk(files[0], rows[:250], LAYOUT)
    write_chunk(files[1], rows[250:], LAYOUT)
    columns = {"pt": pt.astype(np.float32), "ntrk": ntrk, "n_real": n_real, "a": a[real],
               "process": process, "label": label}
    return files, columns


def test_counts_of_constructed_dataset(constructed):
    files, col = constructed
    hists = histogram_dataset(files, process_names=("TT", "QCD"), binning_jets=100)
    assert hists.processes == ("TT", "QCD") and hists.labels == ("isB", "isC", "isUD")
    expected_jets = np.zeros((2, 3), dtype=int)
    np.add.at(expected_jets, (col["process"], col["label"]), 1)
    np.testing.assert_array_equal(hists.n_jets, expected_jets)
    for name in ("pt", "ntrk", "const", "cand_multiplicity"):
        # every jet lands in exactly one bin (under/overflow included) of its category
        np.testing.assert_array_equal(hists.histograms[name].counts.sum(axis=2), expected_jets)
    assert hists.histograms["a"].counts.sum() == col["n_real"].sum() == len(col["a"])
    assert hists.histograms["q"].counts.sum() == col["n_real"].sum()
    multiplicity = hists.histograms["cand_multiplicity"]
    np.testing.assert_array_equal(multiplicity.edges, [-0.5, 0.5, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(multiplicity.counts.sum(axis=(0, 1))[1:-1],
                                  np.bincount(col["n_real"], minlength=4))
    assert not hists.histograms["a"].integer and hists.histograms["a"].per_candidate


def test_binning(constructed):
    files, col = constructed
    hists = histogram_dataset(files, binning_jets=100)
    # the binning comes from the first chunk (250 jets >= binning_jets)
    pt = hists.histograms["pt"]
    low, high = np.quantile(col["pt"][:250].astype(np.float64), (0.005, 0.995))
    np.testing.assert_allclose(pt.edges, np.linspace(low, high, 51), rtol=0, atol=0)
    counts = pt.counts.sum(axis=(0, 1))
    assert counts[0] == np.count_nonzero(col["pt"] < pt.edges[0])
    assert counts[-1] == np.count_nonzero(col["pt"] > pt.edges[-1])
    np.testing.assert_array_equal(counts[1:-1], np.histogram(col["pt"], pt.edges)[0])
    # integer feature: unit bins centred on the integers 0..12
    ntrk = hists.histograms["ntrk"]
    assert ntrk.integer
    np.testing.assert_array_equal(ntrk.edges, np.arange(14) - 0.5)
    np.testing.assert_array_equal(ntrk.counts.sum(axis=(0, 1))[1:-1],
                                  np.bincount(col["ntrk"].astype(int), minlength=13))
    q = hists.histograms["q"]
    np.testing.assert_array_equal(q.edges, [-1.5, -0.5, 0.5, 1.5])
    assert q.counts.sum(axis=(0, 1))[2] == 0  # padding zeros are not candidates
    # constant feature: one bin around the value holding every jet
    const = hists.histograms["const"]
    np.testing.assert_array_equal(const.edges, [6.5, 7.5])
    np.testing.assert_array_equal(const.counts.sum(axis=(0, 1)), [0, N, 0])
    assert hists.processes == ("process_0", "process_1")


def test_feature_edges_edge_cases():
    # wide integer range: integer-width bins, at most n_bins of them, edges at k + 0.5
    edges, integer = feature_edges(np.arange(0, 1000, dtype=float), n_bins=40)
    widths = np.diff(edges)
    assert integer and len(edges) - 1 <= 40 and np.all(widths == widths[0])
    assert widths[0] == round(widths[0]) and np.all((edges + 0.5) == np.round(edges + 0.5))
    # a spike holding > 99 % of the values: fall back to the min-max range
    spike = np.r_[np.zeros(998), 0.1, 3.0]
    edges, integer = feature_edges(spike, n_bins=10)
    assert not integer and edges[0] == 0 and edges[-1] == 3.0
    edges, _ = feature_edges(np.array([]))
    assert len(edges) == 2


def test_max_jets_and_process_names(constructed):
    files, col = constructed
    hists = histogram_dataset(files, max_jets=300)
    assert hists.n_jets.sum() == 300
    assert hists.histograms["cand_multiplicity"].counts.sum() == 300
    assert hists.histograms["a"].counts.sum() == col["n_real"][:300].sum()
    with pytest.raises(ValueError, match="only 1 process names"):
        histogram_dataset(files, process_names=("TT",))
    with pytest.raises(ValueError, match="no chunk files"):
        histogram_dataset([])


def test_save_load_round_trip(constructed, tmp_path):
    files, _ = constructed
    hists = histogram_dataset(files, process_names=("TT", "QCD"))
    path = hists.save(tmp_path / "inputs.npz")
    loaded = FeatureHistograms.load(path)
    assert (loaded.processes, loaded.labels) == (hists.processes, hists.labels)
    np.testing.assert_array_equal(loaded.n_jets, hists.n_jets)
    assert list(loaded.histograms) == list(hists.histograms)
    for name, h in hists.histograms.items():
        other = loaded.histograms[name]
        np.testing.assert_array_equal(other.edges, h.edges)
        np.testing.assert_array_equal(other.counts, h.counts)
        assert (other.group, other.integer, other.per_candidate) == \
            (h.group, h.integer, h.per_candidate)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small synthetic offline_run3 export split into several chunk files."""
    from utils.config import load_config
    from utils.dataset.directory import DatasetDirectory
    from utils.dataset.export import export_dataset
    from utils.synthetic import write_synthetic_ntuple

    config = load_config("offline_run3")
    directory = tmp_path_factory.mktemp("export")
    inputs = [write_synthetic_ntuple(directory / "TT_0.root", config, 400, seed=1),
              write_synthetic_ntuple(directory / "QCD_0.root", config, 400, seed=2)]
    out = directory / "dataset"
    out.mkdir()
    export_dataset(config, [str(f) for f in inputs], out, out, chunk_size=300,
                   executor="iterative")
    return config, DatasetDirectory(out).files()


def test_exported_dataset_totals_and_classes(exported, tmp_path):
    config, files = exported
    assert len(files) > 1
    hists = histogram_dataset(files, process_names=config.process_names, binning_jets=200)
    rows = np.concatenate([read_chunk(f)[0] for f in files])
    layout = read_chunk(files[0])[1]
    assert hists.n_jets.sum() == len(rows)
    for block in layout.feature_blocks:
        if block.length is None:
            for feature in block.features:
                assert hists.histograms[feature].counts.sum() == len(rows), feature
            continue
        slots = rows[:, layout.slice(block.name)].reshape(len(rows), block.length, -1)
        n_real = np.count_nonzero(np.any(slots != 0, axis=2))
        for feature in block.features:
            assert hists.histograms[feature].counts.sum() == n_real, feature
        assert hists.histograms[f"{block.name}_multiplicity"].counts.sum() == len(rows)
    truth = rows[:, layout.slice("truth")]
    process = rows[:, layout.process_column].astype(int)
    by_class = hists.counts_by_class("jet_pt", config.classes)
    assert list(by_class) == list(config.classes)
    for cls, members in config.classes.items():
        member_columns = [config.truth_labels.index(m) for m in members]
        in_class = truth[:, member_columns].sum(axis=1) == 1
        for p in range(len(config.process_names)):
            assert by_class[cls][p].sum() == np.count_nonzero(in_class & (process == p))
    paths = plot_feature_histograms(hists, tmp_path / "plots", classes=config.classes,
                                    features=["jet_pt", "cpf_multiplicity", "Cpfcan_ptrel"],
                                    processes=["TT"])
    assert sorted(p.relative_to(tmp_path / "plots").as_posix() for p in paths) == sorted(
        f"TT/{name}.{ext}" for name in ("jet_pt", "cpf_multiplicity", "Cpfcan_ptrel")
        for ext in ("pdf", "png"))
    assert all(p.stat().st_size > 1000 for p in paths)


def test_safe_names_and_unknown_inputs(constructed, tmp_path):
    assert safe_name("cpf[0].a b/c") == "cpf_0__a_b_c"
    files, _ = constructed
    hists = histogram_dataset(files)
    with pytest.raises(KeyError, match="no histograms for"):
        plot_feature_histograms(hists, tmp_path, features=["nope"])
    with pytest.raises(KeyError, match="unknown truth labels"):
        hists.counts_by_class("pt", {"b": ["isBB"]})
