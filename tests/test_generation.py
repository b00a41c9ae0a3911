"""Tests of the built-in Pythia8 + toy-detector sample generator (utils.generation)."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import uproot

from tests.conftest import FAST_SAMPLE
from utils.generation import BRANCHES, TREE_NAME, detector, generate_file, pileup
from utils.generation.detector import (
    DETECTOR_MODELS,
    NEUTRAL_HADRON,
    TRACK,
    reconstruct_particles,
    secondary_vertices,
    track_features,
    tracking_efficiency,
)
from utils.generation.generator import EventGenerator, ParticleBatch
from utils.generation.kinematics import pt_eta_phi
from utils.generation.truth import (
    B_LABELS,
    C_LABELS,
    LABELS,
    LIGHT_LABELS,
    decay_chain_origin,
    find_truth,
    jet_labels,
)
from utils.generation.validation import main as validation_main
from utils.generation.validation import plot_validation

TT_EVENTS, QCD_EVENTS = 600, 300


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """One TT and one QCD file with their returned statistics and progress calls."""
    directory = tmp_path_factory.mktemp("generation")
    out = {}
    for process, n_events, seed in (("TT", TT_EVENTS, 11), ("QCD", QCD_EVENTS, 12)):
        calls: list[int] = []
        path = directory / f"{process}.root"
        stats = generate_file(path, process=process, n_events=n_events, seed=seed,
                              pthat_min=30.0, progress=calls.append)
        arrays = uproot.open(path)[TREE_NAME].arrays()
        out[process] = {"path": path, "stats": stats, "calls": calls, "arrays": arrays}
    return out


def _flag(arrays: ak.Array, labels: tuple[str, ...]) -> np.ndarray:
    return np.sum([ak.to_numpy(arrays[label]) for label in labels], axis=0) > 0


def _generate(path, seed: int) -> ak.Array:
    generate_file(path, process="TT", n_events=40, seed=seed)
    return uproot.open(path)[TREE_NAME].arrays()


# --- file format -------------------------------------------------------------------------

def test_tree_is_ttree_with_documented_branches(samples):
    tree = uproot.open(samples["TT"]["path"])[TREE_NAME]
    assert tree.classname == "TTree"
    assert set(tree.keys()) == set(BRANCHES)
    assert list(tree.keys()).count("nsv") == 1
    typenames = {name: tree[name].typename for name in ("event", "isB", "jet_pt", "nCpfcan",
                                                         "Cpfcan_pt", "sv_mass")}
    assert typenames == {"event": "int64_t", "isB": "int32_t", "jet_pt": "float",
                         "nCpfcan": "int32_t", "Cpfcan_pt": "float[]", "sv_mass": "float[]"}


def test_stats_and_progress(samples):
    for process, n_events in (("TT", TT_EVENTS), ("QCD", QCD_EVENTS)):
        sample = samples[process]
        stats, arrays = sample["stats"], sample["arrays"]
        assert sum(sample["calls"]) == n_events and len(sample["calls"]) > 1
        assert stats["n_events"] == n_events
        assert stats["n_jets"] == len(arrays) > n_events
        assert stats["labels"] == {label: int(ak.sum(arrays[label])) for label in LABELS}
        assert stats["seconds"] > 0
        event = ak.to_numpy(arrays["event"])
        assert np.all(np.diff(event) >= 0) and event.min() >= 0 and event.max() < n_events


def test_counters_match_jagged_lengths(samples):
    for sample in samples.values():
        a = sample["arrays"]
        for group, counter, float_counter in (("Cpfcan", "nCpfcan", "n_Cpfcand"),
                                              ("Npfcan", "nNpfcan", "n_Npfcand"),
                                              ("sv", "nsv", None)):
            for name in BRANCHES:
                if name.startswith(group + "_"):
                    assert ak.all(ak.num(a[name]) == a[counter]), name
            if float_counter:
                assert ak.all(a[float_counter] == a[counter])


def test_no_nan_or_inf(samples):
    for sample in samples.values():
        for name in sample["arrays"].fields:
            values = ak.to_numpy(ak.flatten(sample["arrays"][name], axis=None))
            assert np.all(np.isfinite(values)), name


# --- truth labels ----------------------------------------------------------------------------

def test_every_jet_has_exactly_one_label(samples):
    for sample in samples.values():
        a = sample["arrays"]
        total = np.sum([ak.to_numpy(a[label]) for label in LABELS], axis=0)
        assert np.all(total == 1)
        hadron = ak.to_numpy(a["jet_hadronFlavour"])
        assert np.array_equal(hadron == 5, _flag(a, B_LABELS))
        assert np.array_equal(hadron == 4, _flag(a, C_LABELS))
        assert np.array_equal(hadron == 0, _flag(a, LIGHT_LABELS))


def test_flavour_fractions(samples):
    tt, qcd = samples["TT"]["arrays"], samples["QCD"]["arrays"]
    assert 0.2 < _flag(tt, B_LABELS).mean() < 0.5
    assert 0.05 < _flag(tt, C_LABELS).mean() < 0.25
    assert _flag(qcd, B_LABELS).mean() < 0.1
    assert ak.sum(tt["isLeptonicB"]) > 0 and ak.sum(tt["isLeptonicB_C"]) > 0
    assert ak.sum(qcd["isG"]) > ak.sum(qcd["isUD"])  # gluon jets dominate inclusive QCD


def test_b_jets_look_like_b_jets(samples):
    a = samples["TT"]["arrays"]
    leading = ak.to_numpy(ak.fill_none(ak.firsts(a["Cpfcan_BtagPf_trackSip2dSig"]), np.nan))
    has_sv = ak.to_numpy(a["nsv"]) > 0
    median, sv_rate = {}, {}
    for name, labels in (("b", B_LABELS), ("c", C_LABELS), ("light", LIGHT_LABELS)):
        mask = _flag(a, labels)
        median[name] = np.nanmedian(leading[mask])
        sv_rate[name] = has_sv[mask].mean()
    assert median["b"] > median["c"] > median["light"]
    assert sv_rate["b"] > sv_rate["c"] > sv_rate["light"]
    assert median["b"] > 5 and sv_rate["b"] > 0.5 and sv_rate["light"] < 0.05


def _record(rows: list[tuple], px: dict[int, float] | None = None,
            vertex: dict[int, float] | None = None) -> ParticleBatch:
    """A one-event ParticleBatch from (pid, status, mother1, mother2, daughter1, daughter2)."""
    columns = np.array(rows, dtype=np.int64).T
    n = len(rows)
    momentum_x = np.ones(n)
    vertex_x = np.zeros(n)
    for row, value in (px or {}).items():
        momentum_x[row] = value
    for row, value in (vertex or {}).items():
        vertex_x[row] = value
    zeros = np.zeros(n)
    return ParticleBatch(
        n_events=1, offsets=np.array([0, n]), event=np.zeros(n, dtype=np.int64),
        pid=columns[0], status=columns[1], mother1=columns[2], mother2=columns[3],
        daughter1=columns[4], daughter2=columns[5], px=momentum_x, py=zeros, pz=zeros,
        e=momentum_x, vx=vertex_x, vy=zeros, vz=zeros, charge=zeros)


def _heavy_flavour_event(hard_process_b: bool) -> ParticleBatch:
    """g -> b bbar; B0bar -> D+ e nu (D+ -> K mu nu), B+ -> D0bar pi (D0bar -> K e nu)."""
    second_mother = 16 if hard_process_b else 0  # b with two mothers: not a g -> bb splitting
    rows = [
        (90, -11, 0, 0, 0, 0),  # 0 system
        (21, -51, 0, 0, 2, 3),  # 1 gluon splitting into b bbar
        (5, -51, 1, second_mother, 4, 4),  # 2 b
        (-5, -51, 1, 0, 5, 5),  # 3 bbar
        (5, -71, 2, 2, 6, 6),  # 4 b entering hadronisation
        (-5, -71, 3, 3, 7, 7),  # 5 bbar entering hadronisation
        (-511, -83, 4, 0, 8, 9),  # 6 B0bar (contains b)
        (521, -83, 5, 0, 10, 11),  # 7 B+ (contains bbar)
        (411, -91, 6, 0, 12, 13),  # 8 D+
        (11, 91, 6, 0, 0, 0),  # 9 e- from the B0bar
        (-421, -91, 7, 0, 14, 15),  # 10 D0bar
        (211, 91, 7, 0, 0, 0),  # 11 pi+ from the B+
        (-321, 91, 8, 0, 0, 0),  # 12 K- from the D+
        (-13, 91, 8, 0, 0, 0),  # 13 mu+ from the D+
        (321, 91, 10, 0, 0, 0),  # 14 K+ from the D0bar
        (11, 91, 10, 0, 0, 0),  # 15 e- from the D0bar
        (3, -71, 0, 0, 18, 18),  # 16 s quark entering hadronisation
        (21, -71, 0, 0, 18, 18),  # 17 gluon entering hadronisation
        (111, 83, 16, 17, 0, 0),  # 18 prompt pi0
    ]
    return _record(rows, px={16: 5.0, 17: 10.0},
                   vertex={8: 1.0, 9: 1.0, 10: 1.5, 11: 1.5, 12: 3.0, 13: 3.0, 14: 4.0, 15: 4.0})


@pytest.mark.parametrize("hard_process_b", [False, True])
def test_truth_labels_on_a_hand_made_event(hard_process_b):
    batch = _heavy_flavour_event(hard_process_b)
    truth = find_truth(batch)
    assert truth.b_hadrons.tolist() == [6, 7]
    assert truth.c_hadrons.tolist() == [8, 10]
    assert set(truth.partons.tolist()) == {4, 5, 16, 17}
    assert truth.semileptonic[6] == 1 and truth.semileptonic[7] == 2
    assert decay_chain_origin(batch, np.array([12, 11, 9, 18])).tolist() == [6, 7, 6, -1]

    jets_and_rows = {  # jet -> ghosts
        "b": ([0, 0, 1, 2], [6, 7, 6, 7]),
        "c": ([0, 0, 3, 3, 8], [8, 10, 8, 10, 8]),
        "parton": ([4, 6, 6, 7], [4, 16, 17, 16]),
    }
    ghosts = {k: (np.array(j), np.array(r)) for k, (j, r) in jets_and_rows.items()}
    labels = jet_labels(9, batch, truth, ghosts)
    expected = ["isBB" if hard_process_b else "isGBB", "isLeptonicB", "isLeptonicB_C", "isCC",
                "isUD", "isUD", "isG", "isS", "isC"]
    assert [next(k for k in LABELS if labels[k][jet]) for jet in range(9)] == expected
    assert labels["jet_hadronFlavour"].tolist() == [5, 5, 5, 4, 0, 0, 0, 0, 4]
    assert labels["jet_partonFlavour"].tolist() == [0, 0, 0, 0, 5, 0, 21, 3, 0]


# --- detector conventions --------------------------------------------------------------------

def test_candidates_are_sorted_like_cms(samples):
    a = samples["TT"]["arrays"]
    for name in ("Cpfcan_BtagPf_trackSip2dSig", "Npfcan_ptrel", "sv_d3dsig"):
        values = a[name]
        assert ak.all(values[:, 1:] <= values[:, :-1]), name


def test_detector_conventions(samples):
    a = samples["TT"]["arrays"]
    flat = {name: ak.to_numpy(ak.flatten(a[name], axis=None)) for name in a.fields}
    # pileup 30 (default): the hard-scatter vertex plus the resolved pileup vertices
    npv = ak.to_numpy(a["npv"])
    assert np.all(npv >= 1) and np.all(npv == np.round(npv)) and 24 < npv.mean() < 32
    assert np.all(flat["Cpfcan_puppiw"] == 1)  # charged candidates passed CHS
    assert np.all((flat["Npfcan_puppiw"] >= 0) & (flat["Npfcan_puppiw"] <= 1))
    assert np.all(flat["Cpfcan_pt"] >= 1.0) and np.all(np.abs(flat["Cpfcan_eta"]) < 2.5)
    assert np.all(flat["Cpfcan_BtagPf_trackJetDistVal"] <= 0)
    assert np.all(flat["Cpfcan_drminsv"] <= 0.4) and np.all(flat["Npfcan_drminsv"] <= 0.4)
    assert set(np.unique(flat["Cpfcan_VTX_ass"])) <= {5.0, 7.0}
    assert np.all(flat["Npfcan_isGamma"] + flat["Npfcan_HadFrac"] == 1)
    assert np.all((flat["sv_deltaR"] >= -0.5) & (flat["sv_deltaR"] < -0.1))
    assert np.all(flat["sv_ntracks"] >= 2) and np.all(flat["sv_dxysig"] > 3)
    assert np.all(flat["sv_costhetasvpv"] <= 1) and np.all(flat["sv_mass"] < 6.5)
    assert np.all((flat["jet_pt"] > 15) & (np.abs(flat["jet_eta"]) < 2.5))
    category = np.where(ak.to_numpy(a["nsv"]) > 0, 0, 2)
    assert np.array_equal(ak.to_numpy(a["TagVarCSV_vertexCategory"]), category)
    no_charm = flat["TagVarCSV_trackSip2dValAboveCharm"] == -1
    assert 0 < no_charm.mean() < 1
    assert np.all(flat["TagVarCSV_trackSip3dSigAboveCharm"][no_charm] == -1)
    assert np.all(flat["TagVarCSV_jetNSelectedTracks"] <= ak.to_numpy(a["n_Cpfcand"]))


def test_signed_impact_parameters_favour_positive_values_in_b_jets(samples):
    a = samples["TT"]["arrays"]
    b_jets = a[_flag(a, B_LABELS)]
    light = a[_flag(a, LIGHT_LABELS)]
    sig_b = ak.to_numpy(ak.flatten(b_jets["Cpfcan_BtagPf_trackSip3dSig"]))
    sig_light = ak.to_numpy(ak.flatten(light["Cpfcan_BtagPf_trackSip3dSig"]))
    # negative tails: resolution tails, fakes, conversions, pileup tracks
    assert (sig_b > 3).mean() > 4 * (sig_b < -3).mean()
    assert abs((sig_light > 0).mean() - 0.5) < 0.05  # prompt tracks: symmetric resolution


# --- detector models ------------------------------------------------------------------------

REALISTIC, IDEAL = DETECTOR_MODELS["realistic"], DETECTOR_MODELS["ideal"]


def test_tracking_efficiency_falls_with_production_radius():
    radius = np.array([0.0, 15.0, 30.0, 60.0, 100.0])
    np.testing.assert_allclose(tracking_efficiency(radius, REALISTIC),
                               REALISTIC.efficiency * np.array([1.0, 0.75, 0.5, 0.0, 0.0]))
    np.testing.assert_array_equal(tracking_efficiency(radius, IDEAL), np.ones(5))


def test_lost_tracks_become_calorimeter_deposits():
    n = 40_000
    rng = np.random.default_rng(3)
    pid = np.where(np.arange(n) % 2 == 0, 211, 13)  # pions and muons, pT 5 GeV, eta 0
    radius_mm = np.where(np.arange(n) < n // 2, 0.0, 450.0)  # at the PV / at r = 45 cm
    args = (pid, np.ones(n, dtype=np.int64), np.ones(n), np.full(n, 5.0), np.zeros(n),
            np.zeros(n), np.full(n, 5.0))
    ideal = reconstruct_particles(*args, rng, radius_mm, IDEAL)
    assert np.array_equal(np.sort(ideal.row), np.arange(n))  # every particle is a track
    real = reconstruct_particles(*args, rng, radius_mm, REALISTIC)
    tracked = real.row[real.kind == TRACK]
    prompt, displaced = tracked < n // 2, tracked >= n // 2
    assert prompt.sum() / (n // 2) == pytest.approx(REALISTIC.efficiency, abs=0.01)
    assert displaced.sum() / (n // 2) == pytest.approx(REALISTIC.efficiency * 0.25, abs=0.01)
    lost = np.setdiff1d(np.arange(n), tracked)
    in_calo = real.row[real.kind == NEUTRAL_HADRON]
    assert set(in_calo) <= set(lost[pid[lost] == 211])  # lost muons leave nothing
    assert len(in_calo) > 0.9 * (pid[lost] == 211).sum()  # (minus the HCAL threshold)


def _prompt_tracks(n: int, model, seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    phi = rng.uniform(-np.pi, np.pi, n)
    momentum = (10 * np.cos(phi), 10 * np.sin(phi), rng.normal(0, 5, n))
    axis = tuple(m / np.sqrt(sum(c**2 for c in momentum)) for m in momentum)
    zero = (np.zeros(n),) * 3
    return track_features(momentum, zero, axis, np.zeros(n), phi, rng, model)


def test_impact_parameter_tails_and_informative_chi2():
    n = 200_000
    ideal, real = _prompt_tracks(n, IDEAL), _prompt_tracks(n, REALISTIC)
    assert np.all(ideal["ip_scale"] == 1)
    assert (np.abs(ideal["sip2d_sig"]) > 5).mean() < 1e-4  # Gaussian
    tail = real["ip_scale"] > 1
    assert tail.mean() == pytest.approx(REALISTIC.tail_fraction, abs=0.003)
    assert np.all(real["ip_scale"][tail] == REALISTIC.tail_scale)
    # |pull| > 5 from the wide component: 5 % x P(|N(0, 4)| > 5) = 5 % x 0.211
    assert (np.abs(real["sip2d_sig"]) > 5).mean() == pytest.approx(0.05 * 0.211, rel=0.1)
    ratio = real["chi2"][tail].mean() / real["chi2"][~tail].mean()
    assert ratio == pytest.approx(REALISTIC.tail_chi2_scale, rel=0.03)
    assert ideal["chi2"].mean() == pytest.approx(1.0, abs=0.01)


def test_helix_impact_parameter_and_pixelless_resolution():
    """A track made at r = 10 cm along x with pT 2 GeV in 3.8 T misses the PV by the circle's
    distance; its resolution is that of a track with 3 of 4 pixel layers missing."""
    import dataclasses
    exact = dataclasses.replace(REALISTIC, tail_fraction=0.0)
    momentum = (np.array([2.0, 2.0]), np.zeros(2), np.zeros(2))
    vertex_mm = (np.array([100.0, 100.0]), np.zeros(2), np.zeros(2))
    axis = (np.ones(2), np.zeros(2), np.zeros(2))
    tracks = track_features(momentum, vertex_mm, axis, np.zeros(2), np.zeros(2),
                            np.random.default_rng(1), exact, np.array([1.0, -1.0]))
    radius = 2.0 * 100 / (0.2998 * 3.8)  # cm
    expected = np.hypot(10.0, radius) - radius  # the circle's distance to the origin
    sigma = np.hypot(10e-4, 30e-4 / 2.0) * (
        1 + (REALISTIC.pixelless_scale - 1) * (10.0 - 2.9) / (16.0 - 2.9))
    np.testing.assert_allclose(tracks["sigma_xy"], sigma, rtol=1e-12)
    # opposite charges bend to opposite sides: |d0| equal up to the smearing
    np.testing.assert_allclose(np.abs(tracks["sip2d_val"]), expected, atol=6 * sigma)
    assert expected > 0.25  # cm: ~3 mm for the 2 GeV track
    straight = track_features(momentum, vertex_mm, axis, np.zeros(2), np.zeros(2),
                              np.random.default_rng(1), IDEAL, np.array([1.0, -1.0]))
    np.testing.assert_allclose(straight["sip2d_val"], 0.0, atol=5e-3)  # radial line: d0 = 0


def test_conversions_and_fake_tracks():
    n = 200_000
    rng = np.random.default_rng(3)
    e = np.full(n, 10.0)
    eta = np.where(np.arange(n) < n // 2, 0.0, 2.0)
    pt = e / np.cosh(eta)
    pid, status = np.full(n, 22), np.ones(n, dtype=np.int64)
    zero = np.zeros(n)
    converted, electrons = detector.convert_photons(pid, status, pt, zero, pt * np.sinh(eta),
                                                    e, (zero, zero, zero), rng)
    material = 0.4 + 0.5 * np.array([0.0, 2.0])
    expected = (1 - np.exp(-7 / 9 * material)) * (1 - detector.CONVERSION_ID_EFFICIENCY)
    central = converted < n // 2
    assert central.mean() * len(converted) / (n // 2) == pytest.approx(expected[0], rel=0.03)
    assert (~central).sum() / (n // 2) == pytest.approx(expected[1], rel=0.03)
    radius = np.hypot(electrons["vx"], electrons["vy"]) / 10
    assert np.all((radius >= 3.0) & (radius <= 60.0))
    # the pair shares the photon's four-momentum, e- then e+
    np.testing.assert_allclose(electrons["e"][::2] + electrons["e"][1::2], 10.0)
    np.testing.assert_array_equal(electrons["charge"][:4], [-1, 1, -1, 1])
    np.testing.assert_array_equal(electrons["photon"][::2], converted)

    n_tracks = np.full(50_000, 10)
    jet, momentum, point = detector.fake_tracks(n_tracks, np.zeros(50_000), np.zeros(50_000),
                                                rng, REALISTIC)
    assert len(jet) / n_tracks.sum() == pytest.approx(REALISTIC.fake_rate, rel=0.03)
    fake_pt, fake_eta, fake_phi = pt_eta_phi(*momentum)
    assert fake_pt.min() >= 1.0 and np.hypot(fake_eta, fake_phi).max() <= 0.4 + 1e-9
    d0 = (point[0] * momentum[1] - point[1] * momentum[0]) / fake_pt
    assert np.std(d0) / 10 == pytest.approx(detector.FAKE_D0_SIGMA, rel=0.03)


def test_fake_vertex_chains_group_displaced_prompt_tracks():
    import dataclasses
    always = dataclasses.replace(REALISTIC, fake_vertex_rate=1.0)
    jet = np.array([0, 0, 0, 1, 1, 2, 2])
    chain = np.array([-1, -1, 7, -1, -1, -1, -1])
    sig = np.array([5.0, -3.0, 9.0, 4.0, 1.0, 0.5, -8.0])
    grouped = detector.fake_vertex_chains(jet, chain, sig, 3, np.random.default_rng(1),
                                          always, 100)
    # jet 0: the two prompt tracks beyond 2 sigma; the decay-chain track keeps its chain;
    # jets 1 and 2 have only one such track each: no fake vertex
    np.testing.assert_array_equal(grouped, [100, 100, 7, -1, -1, -1, -1])
    never = dataclasses.replace(REALISTIC, fake_vertex_rate=0.0)
    np.testing.assert_array_equal(
        detector.fake_vertex_chains(jet, chain, sig, 3, np.random.default_rng(1), never, 100),
        chain)


def _pion_pairs(mass: float, n_jets: int) -> tuple:
    """``n_jets`` jets with one displaced pion pair of invariant ``mass`` each."""
    pion = 0.13957
    py = math.sqrt(mass**2 / 4 - pion**2)
    jet = np.repeat(np.arange(n_jets), 2)
    momentum = (np.full(2 * n_jets, 5.0), np.tile([py, -py], n_jets), np.zeros(2 * n_jets))
    vertex_mm = (np.full(2 * n_jets, 5.0), np.zeros(2 * n_jets), np.zeros(2 * n_jets))
    jets = {"eta": np.zeros(n_jets), "phi": np.zeros(n_jets), "e": np.full(n_jets, 20.0)}
    return jet, jet.copy(), momentum, vertex_mm, np.full(2 * n_jets, 20e-4), jets


@pytest.mark.parametrize("mass", [0.4976, 1.5])
def test_v0_veto_of_secondary_vertices(mass):
    found = {}
    for name, model in (("ideal", IDEAL), ("realistic", REALISTIC)):
        *args, jets = _pion_pairs(mass, 400)
        vertices = secondary_vertices(*args, jets, np.random.default_rng(5),
                                      np.ones(800), model)
        found[name] = len(vertices["jet"])
        assert np.all(vertices["ntracks"] == 2)
    assert found["ideal"] > 200  # both tracks used: 0.8^2 of the pairs
    if mass == 1.5:
        assert found["realistic"] == found["ideal"]
    else:  # a K0S: rejected only by the realistic model, which decays K0S in flight
        assert found["realistic"] == 0


def test_sv_chi2_grows_with_mismeasured_tracks():
    *args, jets = _pion_pairs(1.5, 400)
    rng = np.random.default_rng(6)
    nominal = secondary_vertices(*args, jets, rng, np.ones(800), REALISTIC)
    rng = np.random.default_rng(6)
    spoiled = secondary_vertices(*args, jets, rng, np.full(800, 4.0), REALISTIC)
    assert np.array_equal(nominal["jet"], spoiled["jet"]) or len(spoiled["jet"]) < len(
        nominal["jet"])  # wider true resolution: some vertices fail dxy significance
    assert spoiled["normchi2"].mean() == pytest.approx(16 * nominal["normchi2"].mean(), rel=0.2)


@pytest.mark.parametrize("in_flight", [False, True])
def test_strange_hadrons_decay_in_flight_only_in_the_realistic_model(in_flight):
    batch = EventGenerator("TT", 3, 30.0, decays_in_flight=in_flight).next_batch(20)
    final = batch.status > 0
    long_lived = np.isin(np.abs(batch.pid), (310, 3122))
    assert long_lived.sum() > 20
    if in_flight:
        assert not (final & long_lived).any()
    else:
        assert (final & long_lived).sum() == long_lived.sum()


def test_ideal_model_is_the_easy_sample(tmp_path):
    """The ideal detector: no lost tracks, Gaussian IPs (chi2 ~ chi2(20)/20), no V0s."""
    real = generate_file(tmp_path / "r.root", process="TT", n_events=150, seed=8,
                         **FAST_SAMPLE)
    ideal = generate_file(tmp_path / "i.root", process="TT", n_events=150, seed=8,
                          detector_model="ideal", **FAST_SAMPLE)
    a = {m: uproot.open(tmp_path / f"{m}.root")[TREE_NAME].arrays() for m in ("r", "i")}
    # conversion electrons, fakes and V0 daughters: tracks far from the jet axis
    far = {m: float(ak.mean(abs(ak.flatten(a[m]["Cpfcan_BtagPf_trackJetDistVal"])) > 0.07))
           for m in a}
    assert far["r"] > 5 * far["i"]
    light = {m: a[m][_flag(a[m], LIGHT_LABELS)] for m in a}
    lead = {m: ak.to_numpy(ak.fill_none(ak.firsts(light[m]["Cpfcan_BtagPf_trackSip3dSig"]),
                                        0.0)) for m in a}
    # displaced tracks from V0 decays and IP tails in light jets
    assert (lead["r"] > 3).mean() > 2 * (lead["i"] > 3).mean()
    assert real["n_events"] == ideal["n_events"] == 150


# --- underlying event and pileup -------------------------------------------------------------

def test_pileup_pool_round_trip_and_damaged_files(tmp_path):
    pool = pileup.generate_pool(20, seed=3, decays_in_flight=True)
    assert pool.n_events == 20 and pool.offsets[-1] == len(pool.pid) > 20 * 30
    _, eta, _ = pt_eta_phi(pool.px, pool.py, pool.pz)
    assert np.all(np.abs(eta) < pileup.POOL_ABS_ETA_MAX)
    assert not np.isin(np.abs(pool.pid), (12, 14, 16)).any()
    path = tmp_path / "pool.npz"
    pool.save(path)
    again = pileup.MinBiasPool.load(path)
    for field in ("offsets", "vertex_tracks", "pid", "px", "vz"):
        np.testing.assert_array_equal(getattr(pool, field), getattr(again, field))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="pool.npz: not a readable pileup pool"):
        pileup.MinBiasPool.load(path)
    fields = {f: getattr(pool, f) for f in ("offsets", "vertex_tracks", "pid", "charge", "px",
                                            "py", "pz", "e", "vx", "vy", "vz")}
    np.savez(path, format=np.int64(pileup.POOL_FORMAT + 1), **fields)
    with pytest.raises(ValueError, match="pileup pool format"):
        pileup.MinBiasPool.load(path)
    np.savez(path, format=np.int64(pileup.POOL_FORMAT), **{**fields, "px": fields["px"][:-1]})
    with pytest.raises(ValueError, match="inconsistent pileup pool"):
        pileup.MinBiasPool.load(path)


def test_overlay_appends_rotated_pileup_along_z():
    pool = pileup.generate_pool(30, seed=4, decays_in_flight=False)
    batch = EventGenerator("TT", seed=5, pthat_min=30.0, mpi=False).next_batch(20)
    combined, overlay = pileup.overlay(batch, pool, 8.0, np.random.default_rng(1))
    n = len(batch)
    assert len(overlay.dz_cm) == len(overlay.pileup) == len(overlay.removed) == len(combined)
    assert not overlay.pileup[:n].any() and overlay.pileup[n:].all() and len(combined) > n
    for field in ("pid", "px", "vz", "mother1", "event"):
        np.testing.assert_array_equal(getattr(combined, field)[:n], getattr(batch, field))
    # a rotation in phi and a mirror in z keep pT, |pz| and E of the pool particles
    pu = slice(n, None)
    pt = np.hypot(combined.px[pu], combined.py[pu])
    pool_pt = np.hypot(pool.px, pool.py)
    assert np.isin(np.round(pt, 6), np.round(pool_pt, 6)).all()
    assert np.isin(np.round(np.abs(combined.pz[pu]), 6), np.round(np.abs(pool.pz), 6)).all()
    # no history: the mother is the event's system row, so no ghost and no decay chain
    np.testing.assert_array_equal(combined.mother1[pu], batch.offsets[combined.event[pu]])
    assert np.all(decay_chain_origin(combined, np.arange(n, len(combined))) ==
                  combined.mother1[pu])
    # vertices along z with the luminous width; CHS removes only resolved vertices' tracks
    dz, removed = overlay.dz_cm[pu], overlay.removed[pu]
    assert np.median(np.abs(combined.vz[pu] - dz * 10)) < 1e-4  # mm: most are prompt
    assert 2.0 < np.std(np.unique(dz)) < 8.0 and not overlay.removed[:n].any()
    assert not removed[np.abs(dz) < pileup.PV_MERGE_DZ_CM].any()
    assert removed[np.abs(dz) >= pileup.DZ_COMPATIBLE_CM].all()
    kept = ~removed & (np.abs(dz) >= pileup.PV_MERGE_DZ_CM)
    assert 0 < kept.sum() < 0.5 * (~removed).sum() + 1
    # rows made later by pileup rows (conversion electrons) inherit their bookkeeping
    parents = np.array([0, n, len(combined) - 1])
    more = overlay.extended(parents)
    np.testing.assert_array_equal(more.pileup[-3:], [False, True, True])
    np.testing.assert_array_equal(more.dz_cm[-3:], overlay.dz_cm[parents])
    assert np.all(overlay.npv >= 1) and 4 < overlay.npv.mean() < 10
    empty, none = pileup.overlay(batch, pool, 0.0, np.random.default_rng(1))
    assert len(empty) == n and np.all(none.npv == 1)


def test_puppi_alpha_and_weights():
    # group 0: one track (pT 10) at the origin; group 1: none
    group = np.array([0, 0, 0, 0, 1])
    eta = np.array([0.05, 0.2, 0.35, 0.5, 0.0])
    phi = np.zeros(5)
    alpha = pileup.puppi_alpha(group, eta, phi, np.array([0]), np.array([10.0]),
                               np.array([0.0]), np.array([0.0]), 2)
    expected = np.log((10.0 / eta[:3]) ** 2)
    np.testing.assert_allclose(alpha, [*expected, 0.0, 0.0], rtol=1e-12)  # dR >= 0.4: 0
    median, rms = 5.0, 2.0
    weights = pileup.puppi_weights(alpha, median, rms)
    np.testing.assert_allclose(weights[:3], [math.erf((a - median) / (rms * math.sqrt(2)))
                                             for a in expected], rtol=1e-12)
    np.testing.assert_array_equal(weights[3:], 0.0)
    # the reference: probes spread over |eta| < 2.5; an event without tracks gives alpha 0
    median, rms = pileup.puppi_reference(np.zeros(0, int), np.zeros(0), np.zeros(0),
                                         np.zeros(0), 3, np.random.default_rng(1))
    assert median == 0.0 and rms == pileup.PUPPI_RMS_MIN


def test_underlying_event_and_pileup_options(tmp_path):
    """--mpi False --pileup 0 is the earlier sample; MPI and pileup add soft candidates."""
    pool = pileup.generate_pool(200, seed=9, decays_in_flight=True)
    a = {}
    for name, kwargs in (("easy", FAST_SAMPLE), ("mpi", {"pileup_mu": 0.0}),
                         ("pileup", {"pileup_pool": pool})):
        generate_file(tmp_path / f"{name}.root", process="TT", n_events=100, seed=4, **kwargs)
        a[name] = uproot.open(tmp_path / f"{name}.root")[TREE_NAME].arrays()
    for name in ("easy", "mpi"):
        assert np.all(a[name]["npv"] == 1) and ak.all(a[name]["Npfcan_puppiw"] == 1)
    assert ak.mean(a["pileup"]["npv"]) > 20
    hard = {name: arrays[arrays["jet_pt"] > 30] for name, arrays in a.items()}
    neutrals = {name: float(ak.mean(jets["n_Npfcand"])) for name, jets in hard.items()}
    assert neutrals["easy"] < neutrals["mpi"] < 0.5 * neutrals["pileup"]
    # PUPPI-like weights in [0, 1], not all 1; the pT offset correction keeps the jet
    # energy scale
    weights = ak.to_numpy(ak.flatten(a["pileup"]["Npfcan_puppiw"]))
    assert 0.01 < (weights < 0.1).mean() < 0.5 and np.all((weights >= 0) & (weights <= 1))
    assert abs(ak.mean(a["pileup"]["jet_pt"][a["pileup"]["jet_pt"] > 30]) /
               ak.mean(a["mpi"]["jet_pt"][a["mpi"]["jet_pt"] > 30]) - 1) < 0.1


# --- reproducibility and errors ------------------------------------------------------------

def test_same_seed_is_bit_identical_and_different_seed_differs(tmp_path):
    first = _generate(tmp_path / "a.root", seed=5)
    again = _generate(tmp_path / "b.root", seed=5)
    other = _generate(tmp_path / "c.root", seed=6)
    assert first.fields == again.fields
    for name in first.fields:
        assert ak.all(first[name] == again[name], axis=None), name
    assert len(first) != len(other) or not ak.all(first["jet_pt"] == other["jet_pt"])


@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"process": "WW"}, "process"),
    ({"n_events": 0}, "n_events"),
    ({"n_events": 2.5}, "n_events"),
    ({"seed": -1}, "seed"),
    ({"seed": 900_000_000}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"process": "QCD", "pthat_min": 0.0}, "pthat_min"),
    ({"process": "QCD", "pthat_min": math.nan}, "pthat_min"),
    ({"detector_model": "perfect"}, "detector"),
    ({"pileup_mu": -1.0}, "pileup"),
    ({"pileup_mu": math.inf}, "pileup"),
    ({"mpi": 1}, "mpi"),
])
def test_bad_parameters_raise(tmp_path, kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        generate_file(tmp_path / "bad.root", **{"n_events": 10, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_file_without_jets_is_a_valid_empty_tree(tmp_path):
    for seed in range(1, 30):  # soft QCD events often have no jet above 15 GeV
        path = tmp_path / f"qcd_{seed}.root"
        if generate_file(path, process="QCD", n_events=1, seed=seed,
                         pthat_min=5.0)["n_jets"] == 0:
            break
    else:
        pytest.fail("no QCD event without jets found")
    tree = uproot.open(path)[TREE_NAME]
    assert tree.classname == "TTree" and tree.num_entries == 0
    assert set(tree.keys()) == set(BRANCHES)


def test_pthat_min_is_ignored_for_ttbar(tmp_path):
    stats = generate_file(tmp_path / "tt.root", process="TT", n_events=1, seed=3,
                          pthat_min=-1.0)
    assert stats["n_events"] == 1


def test_failed_generation_leaves_no_partial_file(tmp_path):
    path = tmp_path / "sample.root"
    path.write_bytes(b"previous content")

    def interrupt(n_new: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_file(path, process="TT", n_events=150, seed=2, progress=interrupt)
    assert path.read_bytes() == b"previous content"
    assert list(tmp_path.iterdir()) == [path]


# --- validation plots ------------------------------------------------------------------------

def test_validation_plots(samples, tmp_path, capsys):
    files = [samples["TT"]["path"], samples["QCD"]["path"]]
    written = plot_validation(files, tmp_path / "plots")
    assert {p.suffix for p in written} == {".png", ".pdf"} and len(written) == 14
    assert {p.stem for p in written} >= {
        "validation_tracks_per_jet_pileup", "validation_leading_track_sip3dsig_pileup",
        "validation_neutral_puppiw", "validation_sv_mass_all"}
    assert all(p.stat().st_size > 1000 for p in written)
    validation_main([str(files[0]), "--out", str(tmp_path / "cli")])
    assert len(capsys.readouterr().out.split()) == 14


def test_pileup_truth_flags(samples):
    """Pileup tracks pass CHS only from vertices near the hard scatter: few per jet, and
    they never form SVs; pileup neutrals are many and get low PUPPI weights."""
    a = samples["TT"]["arrays"]
    tracks = ak.to_numpy(ak.flatten(a["Cpfcan_isPileup"]))
    neutrals = ak.to_numpy(ak.flatten(a["Npfcan_isPileup"]))
    assert set(np.unique(tracks)) <= {0.0, 1.0} and 0 < tracks.mean() < 0.2
    assert 0.2 < neutrals.mean() < 0.9
    weights = ak.to_numpy(ak.flatten(a["Npfcan_puppiw"]))
    # PUPPI keeps most neutrals near hard tracks (pileup ones in jets too), less often pileup
    pu, hard = weights[neutrals == 1], weights[neutrals == 0]
    assert pu.mean() < hard.mean() and hard.mean() > 0.8
    assert (pu < 0.1).mean() > 2 * (hard < 0.1).mean()
