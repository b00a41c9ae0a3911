"""Export (processor + merge) against an independent awkward computation of the same jets."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from utils.config import Derived, FeatureGroup, label_to_class
from utils.dataset.chunk_format import read_chunk
from utils.dataset.directory import DatasetDirectory
from utils.dataset.export import (
    TARGET_CHUNK_BYTES,
    ExportError,
    default_coffea_chunk_size,
    export_dataset,
)
from utils.dataset.layout import ColumnLayout
from utils.dataset.reweighting import config_weights
from utils.synthetic import synthetic_arrays, write_ntuple, write_synthetic_ntuple


def expected_rows(config, files):
    """Rows the export must produce, computed independently with uproot + awkward."""
    blocks, n_non_finite = [], 0
    for f in files:
        arrays = uproot.open(f)[config.tree_name].arrays(list(config.branches))
        cols = {name: arrays[name] for name in arrays.fields}
        for group in config.groups:
            for d in group.derived:
                cols[d.name] = d(cols)
        pt, eta = ak.to_numpy(cols[config.pt_key]), ak.to_numpy(cols[config.eta_key])
        flags = np.stack([ak.to_numpy(cols[t]) > 0 for t in config.truth_labels], axis=1)
        sel = ((pt >= config.pt_bins[0]) & (pt < config.pt_bins[-1]) &
               (eta >= config.eta_bins[0]) & (eta < config.eta_bins[-1]) & flags.any(axis=1))
        parts = []
        for group in config.groups:
            if group.length is None:
                parts += [ak.to_numpy(cols[name][sel])[:, None] for name in group.features]
            else:
                padded = [ak.to_numpy(ak.fill_none(ak.pad_none(cols[name][sel], group.length,
                                                               clip=True), 0.0))
                          for name in group.features]
                parts.append(np.stack(padded, axis=2).reshape(int(sel.sum()), -1))
        process = config.process_names.index("TT" if "TT_" in str(f) else "QCD")
        parts.append(np.full((int(sel.sum()), 1), process))
        first = np.argmax(flags[sel], axis=1)
        parts.append(np.eye(len(config.truth_labels))[first])
        rows = np.concatenate(parts, axis=1).astype(np.float32)
        finite = np.isfinite(rows).all(axis=1)
        n_non_finite += int((~finite).sum())
        blocks.append(rows[finite])
    return np.concatenate(blocks), n_non_finite


def sort_rows(rows):
    return rows[np.lexsort(rows.T[::-1])]


def run_export(config, files, tmp_path, **kwargs):
    out = tmp_path / "dataset"
    work = out / "work"
    work.mkdir(parents=True)
    kwargs.setdefault("executor", "iterative")
    summary = export_dataset(config, [str(f) for f in files], out, work, **kwargs)
    return summary, work


def load_all(work):
    chunks = [read_chunk(work / p.name)[0] for p in DatasetDirectory(work).files()]
    return chunks


@pytest.mark.parametrize("chunk_size", [100, 1000, 10000])
def test_jets_in_equal_jets_out(tmp_path, offline_config, synthetic_files, chunk_size):
    files, _ = synthetic_files
    summary, work = run_export(offline_config, files, tmp_path, chunk_size=chunk_size)
    expected, n_bad = expected_rows(offline_config, files)
    chunks = load_all(work)
    sizes = [len(c) for c in chunks]
    assert sum(sizes) == len(expected) == summary.counts["selected"]
    assert all(s == chunk_size for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_size
    assert summary.counts["non_finite"] == n_bad > 0
    rows = np.concatenate(chunks)
    layout = ColumnLayout.from_config(offline_config)
    without_weight = rows[:, :layout.weight_column]
    # equal per-feature sums and identical jets (as a multiset)
    np.testing.assert_allclose(without_weight.sum(axis=0, dtype=np.float64),
                               expected.sum(axis=0, dtype=np.float64), rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(sort_rows(without_weight), sort_rows(expected))
    # no all-zero padding rows: every row has one label and non-zero features
    assert np.all(rows[:, layout.slice("truth")].sum(axis=1) == 1)
    assert np.all(np.abs(rows[:, layout.slice("global")]).sum(axis=1) > 0)
    assert np.isfinite(rows).all()


def test_weights_histogram_and_metadata(tmp_path, offline_config, synthetic_files):
    files, _ = synthetic_files
    summary, work = run_export(offline_config, files, tmp_path, chunk_size=1000)
    layout = ColumnLayout.from_config(offline_config)
    rows = np.concatenate(load_all(work))
    labels = np.argmax(rows[:, layout.slice("truth")], axis=1)
    weights = rows[:, layout.weight_column]
    assert weights.min() >= 0 and weights.max() <= 1
    reference = offline_config.truth_labels.index("isB")
    assert np.all(weights[labels == reference] == 1)
    assert weights[labels != reference].min() < 1
    # histogram.npy equals an independent 2D histogram of the exported jets
    hist = np.load(work / "histogram.npy")
    pt = rows[:, layout.column("jet_pt")]
    eta = rows[:, layout.column("jet_eta")]
    for i in range(len(offline_config.truth_labels)):
        h, _, _ = np.histogram2d(pt[labels == i], eta[labels == i],
                                 bins=(offline_config.pt_bins, offline_config.eta_bins))
        np.testing.assert_array_equal(hist[i], h)
    tables = config_weights(offline_config, hist).tables
    expected_w = tables[labels,
                        np.searchsorted(offline_config.pt_bins, pt, side="right") - 1,
                        np.searchsorted(offline_config.eta_bins, eta, side="right") - 1]
    np.testing.assert_array_equal(weights, expected_w.astype(np.float32))
    meta = json.loads((work / "weights.json").read_text())
    chunks = load_all(work)
    assert meta["rows"] == [len(c) for c in chunks]
    assert meta["files"] == [f"file_{k}.lz4" for k in range(len(chunks))]
    np.testing.assert_allclose(meta["sum_weight"],
                               [c[:, -1].sum(dtype=np.float64) for c in chunks], rtol=1e-9)
    info = json.loads((work / "dataset_info.json").read_text())
    assert info["counts"]["selected"] == len(rows)
    assert sum(v["selected"] for v in info["inputs"].values()) == len(rows)
    assert sum(info["jets_per_label"].values()) == len(rows)
    # the reweighting report: per class, jets and the expected jets kept per epoch
    report = info["reweighting"]
    assert report["method"] == "reference" and report["reference"] == "isB"
    assert report["quantile"] == 0.9 and report["min_jets_per_bin"] == 10
    assert sum(c["jets"] for c in report["classes"].values()) == len(rows)
    class_of = np.array([label_to_class(offline_config.classes)[label]
                         for label in offline_config.truth_labels])[labels]
    for k, c in enumerate(report["classes"].values()):
        assert c["jets"] == int((class_of == k).sum())
        assert c["expected_kept"] == pytest.approx(weights[class_of == k].sum(), rel=1e-5)
        assert 0 <= c["clipped_fraction"] <= 1
    assert report["expected_kept"] == pytest.approx(meta["total_weight"], rel=1e-5)
    assert sum(c["fraction_after_sampling"] for c in report["classes"].values()) == \
        pytest.approx(1)


def test_shuffled_and_deterministic(tmp_path, offline_config, synthetic_files):
    files, _ = synthetic_files
    _, work_a = run_export(offline_config, files, tmp_path / "a", chunk_size=1000, seed=5)
    _, work_b = run_export(offline_config, files, tmp_path / "b", chunk_size=1000, seed=5,
                           executor="futures", workers=2, coffea_chunk_size=700)
    _, work_c = run_export(offline_config, files, tmp_path / "c", chunk_size=1000, seed=6)
    a, b, c = load_all(work_a), load_all(work_b), load_all(work_c)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    layout = ColumnLayout.from_config(offline_config)
    # TT and QCD jets are mixed in every chunk (QCD is the last input file)
    for chunk in a:
        assert len(np.unique(chunk[:, layout.process_column])) == 2


def test_derived_features_and_observers(tmp_path, offline_config):
    config = offline_config.replace(
        groups=(
            FeatureGroup("global", ("jet_pt", "jet_eta", "nsv"), derived=(
                Derived("jet_px_like", ("jet_pt", "jet_eta"), lambda jet_pt, jet_eta:
                        jet_pt * np.cos(jet_eta)),)),
            FeatureGroup("cpf", ("Cpfcan_ptrel", "Cpfcan_BtagPf_trackSip2dSig"), length=3,
                         derived=(Derived("Cpfcan_logptrel", ("Cpfcan_ptrel",),
                                          lambda Cpfcan_ptrel: np.log1p(abs(Cpfcan_ptrel))),),
                         sort_by="Cpfcan_BtagPf_trackSip2dSig"),
        ),
        observers=("npv", "event"),
    )
    arrays = synthetic_arrays(config, 500, seed=9)
    arrays["event"] = np.arange(500, dtype=np.int64) * 7919 + 3_000_000_001  # beyond float32
    path = write_ntuple(tmp_path / "TT_x.root", config.tree_name, arrays)
    summary, work = run_export(config, [path], tmp_path, chunk_size=10000)
    rows = np.concatenate(load_all(work))
    layout = ColumnLayout.from_config(config)
    observers = layout.decode_observers(rows)
    # observers are exact (float64 bits), e.g. event numbers above 2**24
    events = observers["event"]
    assert np.array_equal(np.sort(events), np.sort(arrays["event"][np.isin(
        arrays["event"], events)].astype(np.float64)))
    assert np.all(events == np.round(events)) and events.min() > 3e9
    # candidates are sorted by decreasing Sip2dSig before clipping to 3
    sip = rows[:, layout.slice("cpf")].reshape(len(rows), 3, 3)[:, :, 1]
    n_real = np.abs(rows[:, layout.slice("cpf")].reshape(len(rows), 3, 3)).sum(2) > 0
    for a, b in ((0, 1), (1, 2)):
        both = n_real[:, a] & n_real[:, b]
        assert np.all(sip[both, a] >= sip[both, b])
    top = ak.sort(arrays["Cpfcan_BtagPf_trackSip2dSig"], axis=1, ascending=False)
    expected_top = ak.to_numpy(ak.fill_none(ak.firsts(top), 0.0))
    by_event = dict(zip(arrays["event"].astype(np.float64), expected_top, strict=True))
    np.testing.assert_array_equal(sip[:, 0], [by_event[e] for e in events])
    np.testing.assert_allclose(
        rows[:, layout.column("jet_px_like")],
        rows[:, layout.column("jet_pt")] * np.cos(rows[:, layout.column("jet_eta")]), rtol=1e-6)
    assert np.isfinite(observers["npv"]).all() and observers["npv"].std() > 0


def test_debug_mode_limits_input(tmp_path, offline_config, synthetic_files):
    files, _ = synthetic_files
    summary, _ = run_export(offline_config, files, tmp_path, chunk_size=1000, debug=True)
    assert sorted(summary.inputs) == sorted(str(f) for f in files if not f.name == "TT_1.root")
    assert summary.counts["entries"] <= 2 * 3 * 5000


def test_nothing_selected_is_an_error(tmp_path, offline_config):
    config = offline_config.replace(pt_bins=(5000, 6000))
    arrays = synthetic_arrays(offline_config, 100, seed=4)
    arrays["jet_eta"][:7] = np.nan
    path = write_ntuple(tmp_path / "TT_high.root", config.tree_name, arrays)
    with pytest.raises(ExportError) as info:
        run_export(config, [path], tmp_path, chunk_size=10)
    message = str(info.value)
    assert message.startswith("no jet passed the selection in 1 file(s) (100 entries): 93 "
                              "outside jet_pt [5000, 6000) / jet_eta [-2.5, 2.5)")
    assert "without any of the truth labels ['isB', 'isBB'" in message
    assert message.endswith("7 with NaN/inf (in jet_eta: 7)")
    assert not list((tmp_path / "dataset" / "work").iterdir())


def test_empty_chunks_and_files_and_nan_kinematics(tmp_path, offline_config):
    """A coffea chunk or a whole file without selected jets is fine (with observers, whose
    encoding once failed on zero rows); NaN/inf pT or eta counts as NaN/inf, per branch."""
    config = offline_config.replace(observers=("event",))
    empty = synthetic_arrays(config, 300, seed=5)
    empty["jet_pt"] = np.full(300, 5000.0, dtype=np.float32)  # beyond the last pT edge
    empty_file = write_ntuple(tmp_path / "QCD_empty.root", config.tree_name, empty)
    arrays = synthetic_arrays(config, 900, seed=6)
    arrays["jet_pt"][:200] = 5000.0  # the first coffea chunk (200 entries) keeps no jet
    arrays["jet_pt"][300:305] = np.nan
    arrays["jet_eta"][305:308] = -np.inf
    good = write_ntuple(tmp_path / "TT_mixed.root", config.tree_name, arrays)
    summary, work = run_export(config, [good, empty_file], tmp_path, chunk_size=100,
                               coffea_chunk_size=200)
    c = summary.counts
    assert summary.empty_files == [str(empty_file)]
    assert summary.inputs[str(empty_file)] == {"process": "QCD", "entries": 300, "selected": 0}
    assert c["entries"] == 1200 == c["selected"] + c["out_of_window"] + c["no_label"] + \
        c["rejected"] + c["non_finite"]
    assert summary.non_finite_branches == {"jet_eta": 3, "jet_pt": 5}
    assert c["non_finite"] == 8
    rows = np.concatenate(load_all(work))
    assert len(rows) == c["selected"] > 0 and np.isfinite(rows).all()
    info = json.loads((work / "dataset_info.json").read_text())
    assert info["non_finite_branches"] == {"jet_eta": 3, "jet_pt": 5}
    assert sum(info["jets_per_process_label"]["TT"].values()) == c["selected"]
    assert "QCD" not in info["jets_per_process_label"] or \
        not sum(info["jets_per_process_label"]["QCD"].values())


def test_dask_local_cluster_identical_to_futures(tmp_path, offline_config, synthetic_files):
    pytest.importorskip("distributed")
    files, _ = synthetic_files
    futures, work_f = run_export(offline_config, files, tmp_path / "f", chunk_size=1000,
                                 executor="futures", workers=2, coffea_chunk_size=800)
    dask, work_d = run_export(offline_config, files, tmp_path / "d", chunk_size=1000,
                              executor="dask", workers=2, coffea_chunk_size=800)
    assert dask.counts == futures.counts
    np.testing.assert_array_equal(np.load(work_d / "histogram.npy"),
                                  np.load(work_f / "histogram.npy"))
    for a, b in zip(load_all(work_f), load_all(work_d), strict=True):
        np.testing.assert_array_equal(a, b)  # same jets, same order, same weights


def test_float16_storage_keeps_observers_exact(tmp_path, offline_config):
    config = offline_config.replace(storage_dtype="float16", observers=("event",))
    arrays = synthetic_arrays(config, 400, seed=2)
    # event numbers whose float64 bit words include float16 inf/nan patterns (0x7C00...)
    arrays["event"] = np.arange(400, dtype=np.int64) * 31744 + 5628
    path = write_ntuple(tmp_path / "TT_f16.root", config.tree_name, arrays)
    _, work = run_export(config, [path], tmp_path, chunk_size=1000)
    rows = np.concatenate(load_all(work))
    events = ColumnLayout.from_config(config).decode_observers(rows)["event"]
    assert set(events.astype(np.int64)) <= set(arrays["event"].tolist())
    assert np.all(events == np.round(events))


def test_selection_on_derived_column(tmp_path, offline_config):
    config = offline_config.replace_group(
        "global", derived=(Derived("abs_eta", ("jet_eta",), np.abs),)).replace(
        selection=Derived("central", ("abs_eta",), lambda abs_eta: abs_eta < 1.0))
    path = write_synthetic_ntuple(tmp_path / "TT_d.root", config, 600, seed=3)
    summary, work = run_export(config, [path], tmp_path, chunk_size=1000)
    rows = np.concatenate(load_all(work))
    layout = ColumnLayout.from_config(config)
    assert summary.counts["rejected"] > 0
    assert np.all(np.abs(rows[:, layout.column("jet_eta")]) < 1.0)


def test_input_errors_are_not_retried(tmp_path, offline_config):
    """Even where coffea would retry a failing chunk, b-hive's own input errors (here a
    jagged branch where one value per jet is expected) are reported at once, with the
    file."""
    arrays = synthetic_arrays(offline_config, 200, seed=6)
    arrays["jet_pt"] = arrays["Cpfcan_ptrel"]
    bad = write_ntuple(tmp_path / "TT_jagged.root", offline_config.tree_name, arrays)
    message, retries = _export_error(offline_config, bad, tmp_path / "staging")
    assert f"{bad}: branch 'jet_pt': expected one value per jet" in message
    assert not retries


def _export_error(config, path, staging):
    """``(message, retry warnings)`` of an export of ``path`` that fails (coffea allowed
    3 retries)."""
    import warnings

    from utils.dataset.export import run_processor

    staging.mkdir()
    with warnings.catch_warnings(record=True) as caught, \
            pytest.raises(ExportError) as info:
        warnings.simplefilter("always")
        run_processor(config, {"TT": [str(path)]}, {str(path): 0}, staging, seed=1,
                      executor="iterative", retries=3)
    return str(info.value), [w for w in caught if "attempt" in str(w.message)]


@pytest.mark.parametrize("part", ["selection", "feature"])
def test_config_function_failing_on_a_file_names_it_and_is_not_retried(tmp_path, offline_config,
                                                                       part):
    """A derived column of the config (selection, feature; truths go the same way) that
    fails on a file's values, here a jagged branch given to a per-jet function, is one error
    naming the file, the column and its inputs' types, not a retried traceback."""
    def per_jet(Cpfcan_ptrel):  # noqa: N803 (derived functions take the branch names)
        return np.asarray(Cpfcan_ptrel) > 0  # numpy cannot take one list per jet

    derived = Derived("has_ptrel", ("Cpfcan_ptrel",), per_jet)
    config = (offline_config.replace(selection=derived) if part == "selection" else
              offline_config.replace_group("global", derived=(derived,)))
    path = write_synthetic_ntuple(tmp_path / "TT_f.root", config, 200, seed=3)
    staging = tmp_path / "staging"
    message, retries = _export_error(config, path, staging)
    assert f"{path}: 'has_ptrel' of the config, computed from 'Cpfcan_ptrel' (" in message
    assert message.count(str(path)) == 1
    assert "var * float32" in message and "failed: ValueError" in message
    assert not retries
    assert not list(staging.glob("*.raw"))  # nothing staged


def test_coffea_chunk_size(offline_config):
    layout = ColumnLayout.from_config(offline_config)
    by_bytes = TARGET_CHUNK_BYTES // (4 * layout.n_columns)
    assert default_coffea_chunk_size(layout) == by_bytes
    assert default_coffea_chunk_size(layout, 10 * by_bytes, workers=2) == by_bytes
    # few entries: at least two chunks per worker, never under 1000 entries
    assert default_coffea_chunk_size(layout, 100_000, workers=2) == 25_000
    assert default_coffea_chunk_size(layout, 100_001, workers=4) == 12_501
    assert default_coffea_chunk_size(layout, 500, workers=2) == 1_000


def test_only_worker_processes_keep_freed_memory(monkeypatch, tmp_path):
    """The allocator setting applies in the processor's worker processes, not in the one
    that merges (where it slowed the merge)."""
    import os

    import utils.dataset.export as export

    calls = []
    monkeypatch.setattr(export, "keep_freed_memory", lambda: calls.append(os.getpid()))

    class Processor:
        def process(self, events):
            return {"n": len(events)}

    guarded = export._Guarded(Processor(), tmp_path)
    assert guarded([1, 2]) == {"n": 2} and calls == []  # the merging process itself
    guarded.parent = os.getpid() + 1  # as seen from a forked worker
    assert guarded([1, 2, 3]) == {"n": 3} and calls == [os.getpid()]
