"""Evaluation library: exact ROC/AUC, discriminants, working points, binned rates, summary."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from utils.evaluation import discriminants as disc
from utils.evaluation.binned import binned_rate, binned_rates, wilson_interval
from utils.evaluation.roc import EvaluationError, auc, efficiency_at_mistag, roc_curve
from utils.evaluation.summary import (
    discriminant_rocs,
    roc_summary,
    summary_table,
    window_mask,
)
from utils.evaluation.working_points import (
    MISTAG_TARGETS,
    jet_flavours,
    working_points,
    write_working_points,
)

CLASSES6 = ("b", "bb", "lepb", "c", "uds", "g")


def _model_output(n: int, class_names: tuple[str, ...], seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities that prefer the true class, and the true class indices."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(class_names), n)
    logits = rng.normal(0.0, 1.0, (n, len(class_names)))
    logits[np.arange(n), truth] += 1.5
    return disc.softmax(logits), truth


# -- ROC and AUC --------------------------------------------------------------------------
def test_roc_matches_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(3)
    score = rng.integers(0, 40, 5000) / 40.0  # many ties
    is_signal = rng.random(5000) < 0.2 + 0.6 * score
    fpr, tpr, thresholds = roc_curve(score, is_signal)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(is_signal, score, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])
    assert thresholds[0] == np.inf
    assert abs(auc(fpr, tpr) - roc_auc_score(is_signal, score)) < 1e-12


def test_roc_on_constructed_scores():
    score = np.array([0.9, 0.8, 0.8, 0.3])
    is_signal = np.array([True, True, False, False])
    fpr, tpr, thresholds = roc_curve(score, is_signal)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.3])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 1])
    # pairs: 3 signal-above-background + one tie counted half -> 3.5 / 4
    assert auc(fpr, tpr) == pytest.approx(0.875, abs=1e-12)
    assert abs(auc(fpr, tpr) - roc_auc_score(is_signal, score)) < 1e-12
    assert efficiency_at_mistag(fpr, tpr, 0.25) == pytest.approx(0.75)


def test_roc_needs_both_classes():
    with pytest.raises(EvaluationError, match="0 background"):
        roc_curve(np.array([0.1, 0.2]), np.array([True, True]))


# -- discriminants ------------------------------------------------------------------------
def test_discriminant_masks_select_the_right_flavours():
    probs, truth = _model_output(600, CLASSES6)
    is_c, is_b = truth == 3, truth <= 2
    is_light = (truth == 4) | (truth == 5)
    expected = {
        "BvsL": ~is_c, "BvsC": ~is_light, "CvsL": ~is_b, "CvsB": ~is_light,
        "BvsAll": np.ones_like(is_c), "UDSvsG": is_light,
    }
    for name, mask_expected in expected.items():
        mask, score, is_signal = disc.evaluate(disc.by_name(name), probs, truth, CLASSES6)
        np.testing.assert_array_equal(mask, mask_expected, err_msg=name)
        assert len(score) == len(is_signal) == mask.sum()
        assert np.all((score >= 0) & (score <= 1))
    _, _, is_signal = disc.evaluate(disc.by_name("UDSvsG"), probs, truth, CLASSES6)
    np.testing.assert_array_equal(is_signal, truth[is_light] == 4)


def test_available_discriminants_per_model():
    four = [d.name for d in disc.available(("b", "c", "uds", "g"))]
    assert four == ["BvsL", "BvsC", "CvsL", "CvsB", "BvsAll", "UDSvsG"]
    three = [d.name for d in disc.available(("b", "c", "light"))]
    assert three == ["BvsL", "BvsC", "CvsL", "CvsB", "BvsAll"]


def test_discriminant_probabilities():
    probs, truth = _model_output(500, CLASSES6, seed=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    mask, score, _ = disc.evaluate(disc.by_name("BvsL"), probs, truth, CLASSES6)
    p_b, p_l = probs[mask][:, :3].sum(axis=1), probs[mask][:, 4:].sum(axis=1)
    np.testing.assert_allclose(score, p_b / (p_b + p_l), rtol=1e-12)
    _, bvsc, _ = disc.evaluate(disc.by_name("BvsC"), probs, truth, CLASSES6)
    _, cvsb, _ = disc.evaluate(disc.by_name("CvsB"), probs, truth, CLASSES6)
    np.testing.assert_allclose(bvsc + cvsb, 1.0, rtol=0, atol=1e-12)
    # BvsAll on a 3-class model: b / (b + c + l) = P(b)
    probs3, truth3 = _model_output(300, ("b", "c", "light"), seed=2)
    _, bvsall, _ = disc.evaluate(disc.by_name("BvsAll"), probs3, truth3, ("b", "c", "light"))
    np.testing.assert_allclose(bvsall, probs3[:, 0], rtol=1e-12)


def test_discriminant_score_covers_every_jet():
    probs, truth = _model_output(400, CLASSES6, seed=4)
    d = disc.by_name("BvsL")
    mask, score, _ = disc.evaluate(d, probs, truth, CLASSES6)
    every = disc.score(d, probs, CLASSES6)
    assert every.shape == (400,)
    np.testing.assert_array_equal(every[mask], score)
    c_jets = truth == 3
    p_b, p_l = probs[c_jets][:, :3].sum(axis=1), probs[c_jets][:, 4:].sum(axis=1)
    np.testing.assert_allclose(every[c_jets], p_b / (p_b + p_l), rtol=1e-12)


def test_jet_flavours_from_classes():
    flavours = jet_flavours(np.array([0, 1, 2, 3, 4, 5]), CLASSES6)
    assert flavours.tolist() == ["b", "b", "b", "c", "l", "l"]
    assert jet_flavours(np.array([2, 1, 0]), ("b", "c", "light")).tolist() == ["l", "c", "b"]


# -- working points -----------------------------------------------------------------------
def _constructed_wp_sample() -> tuple[np.ndarray, np.ndarray]:
    """1000 light jets at i/1000, 500 b jets at (i + 0.5)/1000 for i >= 500 and 300 c jets
    at (i + 0.25)/1000 for i = 100, 103, ..., 997."""
    light = np.arange(1000) / 1000
    b = (np.arange(500, 1000) + 0.5) / 1000
    c = (np.arange(100, 1000, 3) + 0.25) / 1000
    score = np.concatenate([light, b, c])
    flavour = np.array(["l"] * 1000 + ["b"] * 500 + ["c"] * 300)
    return score, flavour


def test_working_points_on_constructed_scores():
    score, flavour = _constructed_wp_sample()
    wps = {wp.name: wp for wp in working_points(score, flavour)}
    assert list(wps) == list(MISTAG_TARGETS)
    # 1 %: 10 light jets may pass; the 11th largest light score is 0.989, the smallest
    # score above it is the b jet at 0.9895
    m = wps["M"]
    assert m.threshold == pytest.approx(0.9895, abs=0)
    assert m.n_selected["l"] == 10 and m.mistag == 0.01
    assert m.n_selected["b"] == 11 and m.efficiency == 11 / 500
    assert wps["L"].threshold == 0.8995 and wps["L"].n_selected == {"b": 101, "c": 33, "l": 100}
    assert wps["T"].threshold == 0.9985 and wps["T"].n_selected["l"] == 1
    # 0.05 % of 1000 light jets allows none: cut above the highest light score (0.999)
    for name in ("XT", "XXT"):
        assert wps[name].threshold == 0.9995
        assert wps[name].n_selected["l"] == 0 and wps[name].n_selected["b"] == 1
    for wp in wps.values():
        c = score[flavour == "c"]
        assert wp.rates["c"] == np.count_nonzero(c >= wp.threshold) / len(c)
        assert wp.n_jets == {"b": 500, "c": 300, "l": 1000}


def test_working_points_with_light_only_scores():
    light = np.arange(1000) / 1000
    wps = working_points(np.r_[light, 0.5], np.array(["l"] * 1000 + ["b"]),
                         targets={"M": 0.01})
    assert wps[0].threshold == 0.990
    assert np.count_nonzero(light >= wps[0].threshold) == 10


def test_working_points_ties():
    # 980 light jets tied at 0.1, 20 at 0.5; b jets at 0.3 and 0.7
    score = np.r_[np.full(980, 0.1), np.full(20, 0.5), 0.3, 0.7]
    flavour = np.array(["l"] * 1000 + ["b", "b"])
    loose, medium = working_points(score, flavour, targets={"L": 0.1, "M": 0.01})
    # 10 %: the tie at 0.1 (the 101st largest) must fail -> smallest score above it (0.3)
    assert loose.threshold == 0.3 and loose.mistag == 0.02 and loose.efficiency == 1.0
    # 1 %: the 20 tied jets at 0.5 must all fail -> next score above is the b jet at 0.7
    assert medium.threshold == 0.7 and medium.mistag == 0.0 and medium.efficiency == 0.5
    # no jet above the cut: the threshold is the next float and selects nothing
    (only,) = working_points(score[:-1], flavour[:-1], targets={"M": 0.01})
    assert only.threshold == np.nextafter(0.5, 1) and only.n_selected == {"b": 0, "l": 0}


def test_working_points_never_exceed_target_and_lie_on_the_roc():
    rng = np.random.default_rng(5)
    n = 20_000
    is_b = rng.random(n) < 0.3
    score = np.round(np.clip(rng.normal(np.where(is_b, 0.7, 0.3), 0.15), 0, 1), 3)  # ties
    flavour = np.where(is_b, "b", "l")
    fpr, tpr, thresholds = roc_curve(score, is_b)
    for wp in working_points(score, flavour):
        assert wp.mistag <= wp.target
        best = np.flatnonzero(fpr <= wp.target)[-1]  # loosest ROC point within the target
        assert wp.threshold == thresholds[best]
        assert wp.efficiency == tpr[best] and wp.mistag == fpr[best]


def test_working_points_errors():
    with pytest.raises(EvaluationError,
                       match="no light jets: cannot define light mis-id working points"):
        working_points(np.array([0.1, 0.9]), np.array(["b", "c"]))
    with pytest.raises(EvaluationError, match="no b jets"):
        working_points(np.array([0.1, 0.9]), np.array(["l", "c"]))
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        working_points(np.array([0.1, 0.9]), np.array(["l", "b"]), targets={"bad": 0.0})


def test_write_working_points(tmp_path):
    score, flavour = _constructed_wp_sample()
    wps = working_points(score, flavour)
    csv_path, json_path = write_working_points(wps, tmp_path / "wp" / "BvsL")
    assert (csv_path.name, json_path.name) == ("BvsL.csv", "BvsL.json")
    rows = json.loads(json_path.read_text())
    assert [r["name"] for r in rows] == list(MISTAG_TARGETS)
    assert [r["threshold"] for r in rows] == [wp.threshold for wp in wps]
    assert rows[1]["b_efficiency"] == 11 / 500 and rows[1]["l_misid"] == 0.01
    assert rows[1]["n_c"] == 300
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(wps)
    assert float(table[1]["threshold"]) == wps[1].threshold
    assert {"b_efficiency", "c_misid", "l_misid", "n_b", "n_c", "n_l"} <= set(table[0])


# -- binned rates -------------------------------------------------------------------------
def test_binned_rate_against_direct_count():
    rng = np.random.default_rng(6)
    pt = rng.uniform(20, 400, 3000)
    passed = rng.random(3000) < pt / 500
    edges = [30, 50, 100, 200, 300, 500, 1000]  # 500-1000 has no jets, 20-30 is outside
    result = binned_rate(pt, passed, edges)
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (pt >= low) & (pt < high)
        assert result.n_total[i] == inside.sum()
        assert result.n_pass[i] == (inside & passed).sum()
        if inside.any():
            assert result.rate[i] == (inside & passed).sum() / inside.sum()
            assert result.low[i] <= result.rate[i] <= result.high[i]
    assert np.isnan(result.rate[-1]) and np.isnan(result.low[-1]) and np.isnan(result.high[-1])
    assert json.loads(json.dumps(result.to_dict()))["rate"][-1] is None


def test_wilson_interval():
    low, high = wilson_interval(np.array([5, 0, 10]), np.array([10, 10, 10]))
    half = math.sqrt(0.25 / 10 + 1 / 400) / 1.1
    assert low[0] == pytest.approx(0.5 - half) and high[0] == pytest.approx(0.5 + half)
    assert low[1] == 0 and high[1] > 0  # non-zero interval at a rate of 0
    assert high[2] == 1 and low[2] < 1
    assert np.isnan(wilson_interval(np.array([0]), np.array([0]))[0][0])


def test_binned_rates_per_flavour_and_working_point():
    score, flavour = _constructed_wp_sample()
    eta = np.linspace(-2.4, 2.4, len(score))
    wps = working_points(score, flavour, targets={"L": 0.1, "M": 0.01})
    rates = binned_rates(eta, score, flavour, [-2.5, 0, 2.5], wps, flavours=("b", "l", "g"),
                         variable="eta")
    assert [(r.flavour, r.label) for r in rates] == [
        (f, f"{wp} WP") for f in ("b", "l", "g") for wp in ("L", "M")]
    b_medium = rates[1]
    assert b_medium.n_total.sum() == 500 and b_medium.n_pass.sum() == 11
    assert np.all(np.isnan(rates[-1].rate))  # no gluon flavour in the sample


# -- summary ------------------------------------------------------------------------------
def test_summary_values_and_table():
    probs, truth = _model_output(2400, CLASSES6, seed=7)
    rocs = discriminant_rocs(probs, truth, CLASSES6, names=["BvsL", "CvsB"])
    summary = {"TT": {name: r.summary() for name, r in rocs.items()}}
    text = json.dumps(summary, allow_nan=False)
    bvsl = json.loads(text)["TT"]["BvsL"]
    r = rocs["BvsL"]
    assert bvsl["auc"] == auc(r.fpr, r.tpr)
    assert bvsl["eff_at_1pc"] == efficiency_at_mistag(r.fpr, r.tpr, 0.01)
    assert bvsl["n_background"] == np.isin(truth, [4, 5]).sum() < 1000
    assert bvsl["eff_at_0p1pc"] is None  # not resolved by fewer than 1000 light jets
    table = summary_table(summary)
    assert "TT" in table and "BvsL" in table and "CvsB" in table
    assert f"{bvsl['auc']:.4f}" in table and "\x1b[" not in table
    assert "eff @ 1%" in table


def test_summary_errors_name_the_discriminant():
    probs, truth = _model_output(200, CLASSES6, seed=8)
    truth[truth == 3] = 0  # no c jets
    with pytest.raises(EvaluationError, match="BvsC"):
        discriminant_rocs(probs, truth, CLASSES6, names=["BvsC"])
    with pytest.raises(EvaluationError, match="UDSvsG"):
        discriminant_rocs(probs[:, :4], truth % 4, ("b", "c", "light", "x"), names=["UDSvsG"])
    assert roc_summary(np.array([0, 0.5, 1]), np.array([0, 1, 1]), 1, 2)["eff_at_10pc"] is None


def test_window_mask_is_half_open():
    pt = np.array([29.9, 30, 999.9, 1000, 50])
    eta = np.array([0, 0, 0, 0, 2.5])
    np.testing.assert_array_equal(window_mask(pt, eta, (30, 1000), (-2.5, 2.5)),
                                  [False, True, True, False, False])


# -- figures ------------------------------------------------------------------------------
def test_evaluation_figures(tmp_path):
    from utils.plotting.roc import plot_binned, plot_roc, window_label
    from utils.plotting.working_points import plot_working_points, rate_vs_threshold

    score, flavour = _constructed_wp_sample()
    wps = working_points(score, flavour)
    fpr, tpr, _ = roc_curve(score[flavour != "c"], flavour[flavour != "c"] == "b")
    title = window_label("TT", (30, 1000), (-2.5, 2.5))
    assert title.startswith("TT, $30") and r"|\eta| < 2.5" in title
    paths = plot_roc([("BvsL", fpr, tpr, auc(fpr, tpr))], tmp_path / "roc", title,
                     "b-jet efficiency", "light-jet mis-id. rate")
    paths += plot_working_points(score, flavour, wps, tmp_path / "wp", "BvsL", title=title)
    pt = np.linspace(30, 600, len(score))
    rates = binned_rates(pt, score, flavour, [30, 100, 300, 1000], wps[:2], flavours=("c", "l"))
    paths += plot_binned(rates, tmp_path / "misid_pt", title, "Mis-identification rate",
                         log_y=True)
    assert sorted(p.name for p in paths) == ["misid_pt.pdf", "misid_pt.png", "roc.pdf",
                                             "roc.png", "wp.pdf", "wp.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    thresholds, rate = rate_vs_threshold(np.array([0.2, 0.5, 0.5, 0.9]))
    np.testing.assert_array_equal(thresholds, [0.2, 0.5, 0.9])
    np.testing.assert_array_equal(rate, [1.0, 0.75, 0.25])


# -- reports: a model and a reference tagger of the same name --------------------------------
def test_reference_tagger_named_like_the_model_is_reported_apart(tmp_path):
    """A PFNano sample carries CMS DeepJet scores; a DeepJet trained here must not be
    overwritten by them in summary.json, the working points or their files."""
    from utils.config import load_config
    from utils.evaluation.report import Predictions, roc_report, working_point_report

    tagger = {"DeepJet": "TC_2ndTrackSip2dSig"}  # an observer of the demo config
    config = load_config("demo").replace(reference_taggers={"BvsL": tagger, "BvsAll": tagger})
    classes = list(config.classes)
    n = 4000
    probs, truth = _model_output(n, tuple(classes))
    rng = np.random.default_rng(1)
    is_b = np.isin(truth, [classes.index(c) for c in ("b", "bb", "lepb")])
    cms = rng.normal(0.0, 1.0, n) + 3.0 * is_b  # much better than the model
    pred = Predictions("DeepJet", classes, probs, truth, np.full(n, 50.0), np.zeros(n),
                       np.zeros(n, dtype=np.int64), {"TC_2ndTrackSip2dSig": cms})

    summary = roc_report(config, [pred], tmp_path, binned=False)["TT"]["BvsL"]
    light = np.isin(truth, [classes.index(c) for c in ("uds", "g")])
    jets = is_b | light
    model_auc = roc_auc_score(is_b[jets], disc.score(disc.by_name("BvsL"), probs, classes)[jets])
    assert set(summary) == {"DeepJet", "DeepJet (reference)"}
    assert summary["DeepJet"]["auc"] == pytest.approx(model_auc, abs=1e-9)
    assert summary["DeepJet (reference)"]["auc"] == pytest.approx(
        roc_auc_score(is_b[jets], cms[jets]), abs=1e-9)
    assert summary["DeepJet (reference)"]["auc"] > summary["DeepJet"]["auc"] + 0.05

    report = working_point_report(config, pred, tmp_path)["TT"]["BvsL"]
    assert set(report) == {"DeepJet", "DeepJet (reference)"}
    assert report["DeepJet"] != report["DeepJet (reference)"]
    for name, label in (("wp_TT_BvsL.json", "DeepJet"),
                        ("wp_TT_BvsL__DeepJet_reference.json", "DeepJet (reference)")):
        assert json.loads((tmp_path / name).read_text()) == report[label]


def test_working_point_figure_names_shared_thresholds_and_zero_mis_id(tmp_path, monkeypatch):
    """With few light jets the tight working points select none of them: they share one
    threshold, are named together on one marker, and that marker sits below every target
    (not on the tightest target as if it were reached)."""
    from utils.plotting import working_points as figure

    rng = np.random.default_rng(3)
    score = np.concatenate([rng.uniform(0.3, 1.0, 400), rng.uniform(0.0, 0.6, 300)])
    flavour = np.array(["b"] * 400 + ["l"] * 300)
    wps = working_points(score, flavour)
    zero = [wp for wp in wps if wp.mistag == 0]
    assert len(zero) >= 2 and len({wp.threshold for wp in zero}) == 1
    captured = {}
    monkeypatch.setattr(figure, "save", lambda fig, path: captured.setdefault("fig", fig) and [])
    figure.plot_working_points(score, flavour, wps, tmp_path / "wp", "BvsL")
    ax = captured["fig"].axes[0]
    texts = [t.get_text() for t in ax.texts if "$t$ =" in t.get_text()]  # the WP labels
    names = ", ".join(wp.name for wp in zero)
    shared = [t for t in texts if t.startswith(f"{names}: ")]
    assert len(shared) == 1 and shared[0].endswith("no mis-id")
    assert len(texts) == len({wp.threshold for wp in wps})
    (y,) = [t.xy[1] for t in ax.texts if t.get_text() == shared[0]]
    assert y < min(wp.target for wp in wps)
