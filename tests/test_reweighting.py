"""pT-eta reweighting: the methods, the per-class report and a closure test."""

from __future__ import annotations

import numpy as np
import pytest

from utils.dataset.reweighting import (
    ReweightingError,
    bin_index,
    compute_weights,
    jet_weights,
    legacy_tables,
    weighted_quantile,
)

LABELS = ("isB", "isC", "isUD", "isG")
CLASSES = {"b": ("isB",), "c": ("isC",), "l": ("isUD", "isG")}


# -- the original's method (legacy_max) -----------------------------------------------------
def test_legacy_constructed_example():
    ref = np.array([[4.0, 2.0], [0.0, 1.0]])
    other = np.array([[1.0, 1.0], [2.0, 0.0]])
    tables = legacy_tables(np.stack([other, ref]), reference=1)
    # reference: weight 1 where populated, 1 where empty (no jets there)
    np.testing.assert_allclose(tables[1], [[1, 1], [1, 1]])
    # other: (ref/max ref) / (other/max other) = [[1/0.5, 0.5/0.5], [0/1, -]] -> / max 2
    np.testing.assert_allclose(tables[0], [[1.0, 0.5], [0.0, 1.0]])


def test_legacy_weights_in_unit_interval_and_reference_is_one():
    rng = np.random.default_rng(3)
    hist = rng.poisson(5, size=(5, 19, 10)).astype(float)
    hist[2, :3] = 0
    tables = legacy_tables(hist, reference=2)
    assert tables.min() >= 0 and tables.max() <= 1
    assert np.all(tables[2][hist[2] > 0] == 1)
    for i in range(5):
        assert tables[i][hist[i] > 0].max() == pytest.approx(1.0)
    assert np.all(tables[0][:3][hist[0][:3] > 0] == 0)  # reference empty -> weight 0
    assert np.all(legacy_tables(np.ones((3, 2, 2)) * [[[1]], [[0]], [[1]]], 1) == 1)


# -- the per-class methods --------------------------------------------------------------------
def test_reference_method_per_class_with_quantile_and_clipping():
    ref = np.array([[10.0, 10.0], [10.0, 10.0]])                # flat reference (b)
    c = np.array([[40.0, 20.0], [10.0, 10.0]])                  # over-represented corner
    h = np.stack([ref, c, np.full((2, 2), 5.0), np.full((2, 2), 5.0)])
    w = compute_weights(h, LABELS, CLASSES, "reference", "b", quantile=1.0,
                        min_jets_per_bin=0)
    # c: density ratios (0.25 / (n_bin / 80)) = [[0.5, 1], [2, 2]], scale = max = 2
    np.testing.assert_allclose(w.tables[1], [[0.25, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(w.tables[0], 1.0)                # the reference itself
    # the two light labels share the class table (their sum is already flat)
    np.testing.assert_allclose(w.tables[2], w.tables[3])
    np.testing.assert_allclose(w.tables[2], 1.0)
    assert w.classes["c"].kept == pytest.approx(40 * 0.25 + 20 * 0.5 + 20)
    assert w.classes["c"].clipped_fraction == 0
    # the median over c's jets is ratio 0.5 (40 of 80 jets): larger ratios are clipped
    median = compute_weights(h, LABELS, CLASSES, "reference", "b", quantile=0.5,
                             min_jets_per_bin=0)
    np.testing.assert_allclose(median.tables[1], [[1.0, 1.0], [1.0, 1.0]])
    assert median.classes["c"].clipped_fraction == pytest.approx(40 / 80)
    # bins with fewer than min_jets_per_bin jets do not set the scale
    scaled = compute_weights(h, LABELS, CLASSES, "reference", "b", quantile=1.0,
                             min_jets_per_bin=15)
    np.testing.assert_allclose(scaled.tables[1], [[0.5, 1.0], [1.0, 1.0]])
    assert scaled.classes["c"].clipped_fraction == pytest.approx(20 / 80)


def test_class_fractions_none_flat_and_errors():
    rng = np.random.default_rng(1)
    h = rng.integers(5, 60, size=(4, 6, 3)).astype(float)
    equal = compute_weights(h, LABELS, CLASSES, "reference", "isB", class_fractions="equal")
    assert [c.fraction_after for c in equal.classes.values()] == pytest.approx([1 / 3] * 3)
    chosen = compute_weights(h, LABELS, CLASSES, "flat",
                             class_fractions={"b": 2, "c": 1, "l": 1})
    assert [c.fraction_after for c in chosen.classes.values()] == pytest.approx([.5, .25, .25])
    assert 0 < chosen.tables.min() and chosen.tables.max() <= 1
    flat = compute_weights(h, LABELS, CLASSES, "flat")
    for k, name in ((0, "b"), (1, "c")):
        shaped = h[k] * flat.tables[k]
        unclipped = flat.tables[k] < 1
        expected = shaped[unclipped] / shaped[unclipped].sum()
        np.testing.assert_allclose(expected, 1 / unclipped.sum(), rtol=1e-9)
        assert flat.classes[name].jets == int(h[k].sum())
    # class fractions apply to the original's weights too (reference: its labels' sum)
    legacy = compute_weights(h, LABELS, CLASSES, "legacy_max", "l", class_fractions="equal")
    assert [c.fraction_after for c in legacy.classes.values()] == pytest.approx([1 / 3] * 3)
    np.testing.assert_allclose(legacy_tables(h, h[2] + h[3]), compute_weights(
        h, LABELS, CLASSES, "legacy_max", "l").tables)
    none = compute_weights(h, LABELS, CLASSES, "none")
    assert np.all(none.tables == 1) and none.to_dict()["expected_kept"] == h.sum()
    with pytest.raises(ReweightingError, match="neither a class"):
        compute_weights(h, LABELS, CLASSES, "reference", "isX")
    # a reference without jets (a test sample without b jets): no shape matching
    h[0] = 0
    assert np.all(compute_weights(h, LABELS, CLASSES, "reference", "b").tables == 1)


def test_weighted_quantile_counts_jets():
    values, counts = np.array([3.0, 1.0, 2.0]), np.array([1.0, 8.0, 1.0])
    assert weighted_quantile(values, counts, 0.8) == 1.0
    assert weighted_quantile(values, counts, 0.85) == 2.0
    assert weighted_quantile(values, counts, 1.0) == 3.0


def _chi2_per_ndf(a: np.ndarray, b: np.ndarray) -> float:
    """Shape compatibility of two count histograms (normalised), bins with entries."""
    na, nb = a.sum(), b.sum()
    use = (a + b) > 0
    pa, pb = a[use] / na, b[use] / nb
    variance = a[use] / na**2 + b[use] / nb**2
    return float(((pa - pb) ** 2 / variance).sum() / max(use.sum() - 1, 1))


@pytest.mark.parametrize("fractions", [None, "equal"])
def test_closure_after_rejection_sampling(fractions):
    """A large sample whose classes have very different pT-eta shapes: after sampling with
    the weights, every class's pT and eta distributions are the reference's (outside the
    clipped bins), and the class fractions are the requested ones."""
    rng = np.random.default_rng(11)
    pt_bins = np.array([20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000.0])
    eta_bins = np.linspace(-2.5, 2.5, 11)
    shapes = {"isB": (60, 0.9), "isC": (40, 1.2), "isUD": (120, 1.6), "isG": (25, 2.0)}
    sizes = {"isB": 150_000, "isC": 100_000, "isUD": 250_000, "isG": 300_000}
    pt, eta, label = [], [], []
    for i, name in enumerate(LABELS):
        scale, width = shapes[name]
        pt.append(20 + rng.exponential(scale, sizes[name]))
        eta.append(np.clip(rng.normal(0, width, sizes[name]), -2.499, 2.499))
        label.append(np.full(sizes[name], i))
    pt, eta, label = np.concatenate(pt), np.concatenate(eta), np.concatenate(label)
    inside = pt < pt_bins[-1]
    pt, eta, label = pt[inside], eta[inside], label[inside]
    hist = np.stack([np.histogram2d(pt[label == i], eta[label == i], (pt_bins, eta_bins))[0]
                     for i in range(len(LABELS))])
    w = compute_weights(hist, LABELS, CLASSES, "reference", "b", quantile=0.9,
                        min_jets_per_bin=10, class_fractions=fractions)
    weight = jet_weights(w.tables, label, pt, eta, pt_bins, eta_bins)
    kept = rng.random(len(weight)) < weight
    class_of = np.array([0, 1, 2, 2])[label]
    ref = (class_of == 0) & kept
    pt_bin, eta_bin = bin_index(pt, pt_bins), bin_index(eta, eta_bins)
    for k, (name, members) in enumerate(CLASSES.items()):
        table = w.tables[LABELS.index(members[0])]
        shaped = sum(hist[LABELS.index(m)] for m in members) * table
        # clipped bins sit at the table's maximum (1, or the class-fraction factor); bins
        # where the class has no jets cannot take the reference's shape either
        ratio_clipped = np.isclose(table, table.max()) & (k != 0)
        ok = (~ratio_clipped & (shaped > 0))[pt_bin, eta_bin]
        mine = (class_of == k) & kept & ok
        for values, edges in ((pt, pt_bins), (eta, eta_bins)):
            a = np.histogram(values[mine], edges)[0].astype(float)
            b = np.histogram(values[ref & ok], edges)[0].astype(float)
            assert _chi2_per_ndf(a, b) < 1.5, (name, edges[:3])
        assert shaped.sum() == pytest.approx(w.classes[name].kept)
    observed = np.bincount(class_of[kept], minlength=3) / kept.sum()
    expected = [c.fraction_after for c in w.classes.values()]
    np.testing.assert_allclose(observed, expected, atol=0.02)
    if fractions == "equal":
        np.testing.assert_allclose(observed, 1 / 3, atol=0.02)
    # loss weighting uses the same weights: its class mix is the sampling's
    weighted = np.bincount(class_of, weights=weight, minlength=3) / weight.sum()
    np.testing.assert_allclose(weighted, expected, rtol=1e-9)
    # and it keeps more jets than the original's max-normalised weights
    legacy = compute_weights(hist, LABELS, CLASSES, "legacy_max", "isB")
    if fractions is None:
        assert w.to_dict()["expected_kept"] > 1.5 * legacy.to_dict()["expected_kept"]


def test_bin_index_half_open_edges():
    edges = (10.0, 20.0, 50.0)
    np.testing.assert_array_equal(bin_index(np.array([10, 19.99, 20, 49.9, 50, 5]), edges),
                                  [0, 0, 1, 1, 1, 0])


def test_jet_weights_lookup():
    tables = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3)
    w = jet_weights(tables, np.array([0, 1]), np.array([15.0, 30.0]), np.array([-1.0, 2.0]),
                    (10, 20, 40), (-2, 0, 1, 3))
    np.testing.assert_array_equal(w, [tables[0, 0, 0], tables[1, 1, 2]])
