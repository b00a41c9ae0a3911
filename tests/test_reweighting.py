"""pT-eta reweighting to the reference flavour."""

from __future__ import annotations

import numpy as np
import pytest

from utils.dataset.reweighting import bin_index, jet_weights, weight_tables


def test_constructed_example():
    ref = np.array([[4.0, 2.0], [0.0, 1.0]])
    other = np.array([[1.0, 1.0], [2.0, 0.0]])
    tables = weight_tables(np.stack([other, ref]), reference=1)
    # reference: weight 1 where populated, 1 where empty (no jets there)
    np.testing.assert_allclose(tables[1], [[1, 1], [1, 1]])
    # other: (ref/max ref) / (other/max other) = [[1/0.5, 0.5/0.5], [0/1, -]] -> / max 2
    np.testing.assert_allclose(tables[0], [[1.0, 0.5], [0.0, 1.0]])


def test_weights_in_unit_interval_and_reference_is_one():
    rng = np.random.default_rng(3)
    hist = rng.poisson(5, size=(5, 19, 10)).astype(float)
    hist[2, :3] = 0
    tables = weight_tables(hist, reference=2)
    assert tables.min() >= 0 and tables.max() <= 1
    assert np.all(tables[2][hist[2] > 0] == 1)
    for i in range(5):
        populated = tables[i][hist[i] > 0]
        assert populated.max() == pytest.approx(1.0)
    # reference empty -> zero weight for labels populated there
    assert np.all(tables[0][:3][hist[0][:3] > 0] == 0)


def test_reweighted_shapes_match_reference():
    rng = np.random.default_rng(7)
    hist = rng.integers(1, 50, size=(3, 4, 5)).astype(float)
    tables = weight_tables(hist, reference=0)
    expected = hist[0] / hist[0].sum()
    for i in range(3):
        shape = hist[i] * tables[i]
        np.testing.assert_allclose(shape / shape.sum(), expected)


def test_empty_reference_gives_unit_weights():
    hist = np.ones((3, 2, 2))
    hist[1] = 0
    assert np.all(weight_tables(hist, reference=1) == 1)


def test_bin_index_half_open_edges():
    edges = (10.0, 20.0, 50.0)
    np.testing.assert_array_equal(bin_index(np.array([10, 19.99, 20, 49.9, 50, 5]), edges),
                                  [0, 0, 1, 1, 1, 0])


def test_jet_weights_lookup():
    tables = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3)
    w = jet_weights(tables, np.array([0, 1]), np.array([15.0, 30.0]), np.array([-1.0, 2.0]),
                    (10, 20, 40), (-2, 0, 1, 3))
    np.testing.assert_array_equal(w, [tables[0, 0, 0], tables[1, 1, 2]])
