"""The whole chain through `law run`: a reduced DemoRun, its outputs checked independently,
re-runs doing nothing, working points, comparisons and input histograms."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import uproot
from sklearn.metrics import roc_auc_score, roc_curve

from utils.config import load_config
from utils.dataset.chunk_format import read_chunk
from utils.dataset.directory import DatasetDirectory
from utils.evaluation.discriminants import by_name, evaluate, softmax
from utils.io import file_sha256

pytestmark = pytest.mark.slow

SMALL = ("--GenerateSamplesTask-n-files", 1, "--GenerateSamplesTask-events-per-file", 300,
         "--DatasetConstructorTask-chunk-size", 1500)
CHAIN = ("--config", "demo", "--dataset-version", "small", "--training-version", "small",
         "--test-dataset-version", "test_small", "--model-name", "DeepJet", "--epochs", 2,
         "--batch-size", 256)


def most_at_once(log: str, family: str) -> tuple[int, int]:
    """``(most tasks of family running at the same time, tasks of it run)`` from luigi's
    log of a run."""
    running = most = ran = 0
    for match in re.finditer(rf"\b(running|done|failed)\s+{family}\(", log):
        if match.group(1) == "running":
            running, ran = running + 1, ran + 1
            most = max(most, running)
        else:
            running -= 1
    return most, ran


@pytest.fixture(scope="module")
def chain(law_env, tmp_path_factory):
    """Run a reduced DemoRun once; return a runner bound to its DATA_PATH."""
    data = tmp_path_factory.mktemp("chain")

    def run(*args, check=True):
        env = dict(law_env, DATA_PATH=str(data))
        proc = subprocess.run(["law", "run", *map(str, args)], env=env,
                              cwd=law_env["B_HIVE_DIR"], capture_output=True, text=True,
                              timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"law run {args} failed:\n{proc.stdout[-5000:]}\n"
                                 f"{proc.stderr[-5000:]}")
        return proc

    run.data = data
    run.first = run("DemoRun", "--version", "small", "--epochs", 2, "--batch-size", 256,
                    *SMALL, "--workers", 2)
    return run


def _dir(chain, task, *attack_parts):
    parts = ("demo", "small", "test_small", "small", "DeepJet", "epochs_2", "nominal",
             *(attack_parts or ("test_attack_nominal",)))
    return chain.data / task / Path(*parts)


def test_demo_run_outputs_and_summary(chain):
    out = chain.first.stdout
    assert "b-tagging performance of DeepJet" in out and "BvsL (DeepJet)" in out
    # one table: the ROC task leaves it to the preset
    assert out.count("┃ Process ┃") == 1 and "ROC summary" not in out
    assert "Track counting" in out and "roc_TT_BvsL.png" in out
    roc = _dir(chain, "ROCCurveTask")
    summary = json.loads((roc / "summary.json").read_text())
    assert set(summary) == {"TT", "QCD"}
    assert set(summary["TT"]) >= {"BvsL", "BvsC", "CvsL", "CvsB", "BvsAll", "UDSvsG"}
    for name in ("roc_TT_BvsL.npz", "roc_TT_BvsL.pdf", "roc_TT_BvsL.png",
                 "eff_TT_BvsAll_vs_pt.png", "misid_TT_BvsL_vs_eta.pdf"):
        assert (roc / name).exists(), name
    assert (chain.data / "DemoRun" / "small" / "demo" / "DeepJet" / "epochs_2" /
            "summary.txt").exists()


def test_inference_covers_every_test_jet_once(chain):
    inference = _dir(chain, "InferenceTask")
    test_dir = chain.data / "DatasetConstructorTask" / "demo" / "test_small"
    rows = np.concatenate([read_chunk(p)[0] for p in DatasetDirectory(test_dir).files()])
    config = load_config("demo")
    layout = read_chunk(DatasetDirectory(test_dir).files()[0])[1]
    kinematics = np.load(inference / "kinematics.npy")
    np.testing.assert_array_equal(kinematics[:, 0], rows[:, layout.column(config.pt_key)])
    np.testing.assert_array_equal(kinematics[:, 1], rows[:, layout.column(config.eta_key)])
    np.testing.assert_array_equal(np.load(inference / "process.npy"),
                                  rows[:, layout.process_column])
    prediction = np.load(inference / "prediction.npy")
    assert prediction.shape == (len(rows), 6)
    with uproot.open(inference / "output.root") as f:
        tree = f["tree"]
        assert tree.num_entries == len(rows)
        arrays = tree.arrays(["prob_b", "isB", "TC_2ndTrackSip2dSig", "jet_phi"], library="np")
    labels = np.argmax(rows[:, layout.slice("truth")], axis=1)
    np.testing.assert_array_equal(arrays["isB"], (labels == 0).astype(np.int32))
    observers = layout.decode_observers(rows)
    np.testing.assert_array_equal(arrays["jet_phi"], observers["jet_phi"])
    np.testing.assert_array_equal(arrays["TC_2ndTrackSip2dSig"], observers["TC_2ndTrackSip2dSig"])
    probs = np.exp(prediction - prediction.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(arrays["prob_b"], probs[:, 0], rtol=1e-5)
    timing = json.loads((inference / "inference_time.json").read_text())
    assert timing["jets"] == len(rows) and timing["seconds"] > 0


def test_roc_matches_independent_computation(chain):
    inference = _dir(chain, "InferenceTask")
    roc_dir = _dir(chain, "ROCCurveTask")
    logits = np.load(inference / "prediction.npy").astype(np.float64)
    truth = np.load(inference / "truth.npy")
    pt, eta = np.load(inference / "kinematics.npy").T
    process = np.load(inference / "process.npy")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    window = (process == 0) & (pt >= 30) & (pt < 1000) & (eta >= -2.5) & (eta < 2.5)
    b, light = np.isin(truth, [0, 1, 2]), np.isin(truth, [4, 5])
    use = window & (b | light)
    p_b, p_l = probs[:, :3].sum(1), probs[:, 4:].sum(1)
    score = (p_b / (p_b + p_l))[use]
    expected_auc = roc_auc_score(b[use], score)
    summary = json.loads((roc_dir / "summary.json").read_text())
    assert summary["TT"]["BvsL"]["DeepJet"]["auc"] == pytest.approx(expected_auc, abs=1e-9)
    curve = np.load(roc_dir / "roc_TT_BvsL.npz")
    fpr, tpr, _ = roc_curve(b[use], score, drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)


def test_working_points(chain):
    wp_dir = _dir(chain, "WorkingPointTask")
    report = json.loads((wp_dir / "working_points.json").read_text())
    for process in ("TT", "QCD"):
        for disc in ("BvsAll", "BvsL"):
            assert set(report[process][disc]) == {"DeepJet",
                                                  "Track counting (2nd track Sip2dSig)"}
            wps = report[process][disc]["DeepJet"]
            assert [wp["name"] for wp in wps] == ["L", "M", "T", "XT", "XXT"]
            for wp in wps:
                assert wp["l_misid"] <= wp["target"] + 1e-12
            thresholds = [wp["threshold"] for wp in wps]
            assert thresholds == sorted(thresholds)
    with open(wp_dir / "wp_TT_BvsL.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"name", "threshold", "b_efficiency", "c_misid", "l_misid"} <= set(rows[0])
    assert (wp_dir / "wp_TT_BvsL.png").exists()
    assert (wp_dir / "wp_TT_BvsL__Track_counting_2nd_track_Sip2dSig.csv").exists()


def test_rerun_does_nothing_and_status_shows_chain(chain):
    again = chain("DemoRun", "--version", "small", "--epochs", 2, "--batch-size", 256, *SMALL)
    log = again.stdout + again.stderr
    assert "complete ones were encountered" in log and "ran successfully" not in log
    # without --batch-size the stored training's is taken: no clash with the first run
    plain = chain("DemoRun", "--version", "small", "--epochs", 2, *SMALL)
    assert "complete ones were encountered" in plain.stdout + plain.stderr
    status = chain("ROCCurveTask", *CHAIN, *SMALL, "--print-status", "-1")
    for task in ("ROCCurveTask", "InferenceTask", "TrainingTask", "DatasetConstructorTask",
                 "GenerateSamplesTask"):
        assert task in status.stdout
    assert "absent" not in status.stdout


def test_compare_trainings_and_input_histograms(chain):
    chain("TrainingTask", "--config", "demo", "--dataset-version", "small",
          "--training-version", "mlp", "--model-name", "MLP", "--epochs", 2, "--batch-size", 128,
          *SMALL)
    chain("CompareTrainingsTask", "--config", "demo", "--dataset-version", "small",
          "--test-dataset-version", "test_small", "--training-versions", "small,mlp",
          "--model-names", "DeepJet,MLP", "--epochs", 2, *SMALL, "--workers", 2)
    out = next((chain.data / "CompareTrainingsTask").rglob("summary.json"))
    summary = json.loads(out.read_text())
    labels = set(summary["TT"]["BvsL"])
    assert {"DeepJet (small)", "MLP (mlp)"} <= labels
    assert (out.parent / "roc_TT_BvsL.png").exists()
    assert "DeepJet (small)" in (out.parent / "table.txt").read_text()

    chain("HistogramPlotterTask", "--config", "demo", "--dataset-version", "small", *SMALL)
    plots = chain.data / "HistogramPlotterTask" / "demo" / "small"
    index = (plots / "plots.txt").read_text().split()
    assert any(p.endswith("TT/Cpfcan_BtagPf_trackSip2dSig.png") for p in index)
    assert all(Path(p).exists() for p in index)
    # log axes beside the linear ones, not a clash with them
    chain("HistogramPlotterTask", "--config", "demo", "--dataset-version", "small", "--ylog",
          *SMALL)
    logs = (plots / "ylog" / "plots.txt").read_text().split()
    assert len(logs) == len(index) and all(Path(p).exists() for p in logs)


def test_adversarial_training_and_robustness(chain):
    adversarial = chain("TrainingTask", "--config", "demo", "--dataset-version", "small",
                        "--training-version", "small", "--model-name", "DeepJet", "--epochs", 2,
                        "--batch-size", 256, "--attack", "fgsm", "--attack-magnitude", 0.02,
                        *SMALL)
    assert "Training attack: fgsm, magnitude 0.02 (in units of each feature's spread)" in \
        adversarial.stdout
    trained = chain.data / "TrainingTask" / "demo" / "small" / "small" / "DeepJet" / "epochs_2"
    assert (trained / "fgsm" / "epsilon_0.02" / "iterations_1" / "best_model.pt").exists()
    assert (trained / "nominal" / "best_model.pt").exists()

    robustness = ("RobustnessTask", "--config", "demo", "--dataset-version", "small",
                  "--test-dataset-version", "test_small", "--training-versions", "small",
                  "--model-names", "DeepJet", "--attacks", "nominal,fgsm",
                  "--attack-magnitudes", "0,0.02", "--epochs", 2, "--test-attacks", "fgsm,pgd",
                  "--test-magnitudes", "0.05", "--test-attack-iterations", 2, *SMALL)
    status = chain(*robustness, "--print-status", "-1").stdout
    for part in ("fgsm/epsilon_0.02/iterations_1/test_attack_pgd/test_epsilon_0.05/"
                 "test_iterations_2", "nominal/test_attack_fgsm/test_epsilon_0.05/"
                 "test_iterations_1", "test_attack_magnitude=0.05", "attack_magnitude=0.02"):
        assert part in status, part
    run = chain(*robustness, "--workers", 2)
    assert "Robustness on test_small" in run.stdout
    # the inferences (PyTorch on every core) ran one at a time, the rest alongside
    most, ran = most_at_once(run.stdout + run.stderr, "InferenceTask")
    assert most == 1 and ran >= 4, (most, ran)
    out = next((chain.data / "RobustnessTask").rglob("robustness.json"))
    report = json.loads(out.read_text())
    nominal, adversarial = "DeepJet (small)", "DeepJet (small, fgsm-trained 0.02)"
    assert report["entries"] == [nominal, adversarial]
    assert report["attacks"] == ["fgsm", "pgd"] and report["magnitudes"] == [0.05]
    tt = report["results"][nominal]["TT"]["BvsL"]
    # the nominal evaluation is the ROCCurveTask's, and the attacks lower the AUC
    roc = json.loads((_dir(chain, "ROCCurveTask") / "summary.json").read_text())
    assert tt["nominal"]["0"]["auc"] == pytest.approx(roc["TT"]["BvsL"]["DeepJet"]["auc"],
                                                      abs=1e-12)
    assert tt["fgsm"]["0"] == tt["nominal"]["0"]
    assert tt["fgsm"]["0.05"]["auc"] < tt["nominal"]["0"]["auc"]
    assert tt["pgd"]["0.05"]["auc"] < tt["nominal"]["0"]["auc"]
    for entry in report["entries"]:
        for attack in ("fgsm", "pgd"):
            changes = report["input_changes"][entry][attack]["0.05"]
            assert set(changes) == {"global", "cpf", "npf", "vtx"}
            assert all(c["max_abs_change"] <= 0.05 * 1.01 for c in changes.values())
    inference = _dir(chain, "InferenceTask", "test_attack_pgd", "test_epsilon_0.05",
                     "test_iterations_2")
    np.testing.assert_array_equal(np.load(inference / "truth.npy"),
                                  np.load(_dir(chain, "InferenceTask") / "truth.npy"))
    for name in ("robustness_TT_BvsL.png", "robustness_QCD_BvsAll.pdf",
                 "roc_DeepJet_small_TT_BvsL_pgd.png",
                 "roc_DeepJet_small_fgsm_trained_0_02_TT_BvsL_fgsm.png", "table.txt"):
        assert (out.parent / name).exists(), name


def test_onnx_export_and_onnx_backend(chain):
    """ExportONNXTask on the nominal and the fgsm-trained DeepJet, then inference through
    onnxruntime: the same predictions (1e-5) and ROC AUCs (1e-6) as PyTorch."""
    training = ("--config", "demo", "--dataset-version", "small", "--training-version", "small",
                "--model-name", "DeepJet", "--epochs", 2, "--batch-size", 256)
    exported = chain("ExportONNXTask", *training, *SMALL)
    assert "onnxruntime agrees with PyTorch to" in exported.stdout
    base = chain.data / "ExportONNXTask" / "demo" / "small" / "small" / "DeepJet" / "epochs_2"
    card = json.loads((base / "nominal" / "model_card.json").read_text())
    assert card["validation"]["passed"] and card["validation"]["max_abs_difference"] <= 1e-5
    assert card["versions"]["training_path"] == "small/DeepJet/epochs_2/nominal"
    assert card["training"]["checkpoint"] == "best_model.pt"
    chain("ExportONNXTask", *training, "--attack", "fgsm", "--attack-magnitude", 0.02,
          "--checkpoint", "last", *SMALL)
    attacked = base / "fgsm" / "epsilon_0.02" / "iterations_1" / "checkpoint_last"
    assert json.loads((attacked / "model_card.json").read_text())["training"]["checkpoint"] \
        == "model_1.pt"

    test = ("--test-dataset-version", "test_small", *SMALL)
    status = chain("InferenceTask", *training, *test, "--backend", "onnx", "--print-status",
                   "-1").stdout
    assert "ExportONNXTask" in status and "backend_onnx" in status
    chain("InferenceTask", *training, *test, "--backend", "onnx")
    torch_dir = _dir(chain, "InferenceTask")
    onnx_dir = _dir(chain, "InferenceTask", "test_attack_nominal", "backend_onnx")
    torch_pred, onnx_pred = np.load(torch_dir / "prediction.npy"), \
        np.load(onnx_dir / "prediction.npy")
    assert torch_pred.shape == onnx_pred.shape
    assert np.abs(torch_pred - onnx_pred).max() <= 1e-5
    for name in ("truth.npy", "kinematics.npy", "process.npy"):
        np.testing.assert_array_equal(np.load(torch_dir / name), np.load(onnx_dir / name))
    assert json.loads((onnx_dir / "inference_time.json").read_text())["backend"] == "onnx"
    with uproot.open(onnx_dir / "output.root") as f:
        assert f["tree"].num_entries == len(onnx_pred)

    # AUCs of a DeepJet that separates the flavours (the 2-epoch one's scores all lie within
    # 1e-3). With ~1,000 jets one reordered (signal, background) pair moves an AUC by more
    # than 1e-6, and jets whose float32 scores are closer than the backends' difference can
    # swap; so each AUC must agree to 1e-6 or, at most, by the pairs that close.
    trained = ("--config", "demo", "--dataset-version", "small", "--training-version", "fast",
               "--model-name", "DeepJet", "--epochs", 3, "--batch-size", 256,
               "--learning-rate", 0.005, *test)
    chain("ROCCurveTask", *trained)
    chain("ROCCurveTask", *trained, "--backend", "onnx")
    roc = chain.data / "ROCCurveTask" / "demo" / "small" / "test_small" / "fast" / \
        "DeepJet" / "epochs_3" / "nominal" / "test_attack_nominal"
    nominal = json.loads((roc / "summary.json").read_text())
    onnx = json.loads((roc / "backend_onnx" / "summary.json").read_text())
    assert nominal["TT"]["BvsL"]["DeepJet"]["auc"] > 0.8
    inference = chain.data / "InferenceTask" / "demo" / "small" / "test_small" / "fast" / \
        "DeepJet" / "epochs_3" / "nominal" / "test_attack_nominal"
    scores = {backend: softmax(np.load(directory / "prediction.npy"))
              for backend, directory in (("torch", inference),
                                         ("onnx", inference / "backend_onnx"))}
    truth, process = np.load(inference / "truth.npy"), np.load(inference / "process.npy")
    pt, eta = np.load(inference / "kinematics.npy").T
    config = load_config("demo")
    window = (pt >= 30) & (pt < 1000) & (np.abs(eta) < 2.5)
    for p, name in enumerate(config.process_names):
        for disc, taggers in nominal[name].items():
            jets = window & (process == p)
            mask, s_torch, signal = evaluate(by_name(disc), scores["torch"][jets], truth[jets],
                                             list(config.classes))
            s_onnx = evaluate(by_name(disc), scores["onnx"][jets], truth[jets],
                              list(config.classes))[1]
            close = 2 * np.abs(s_torch - s_onnx).max() + 1e-12
            background = np.sort(s_torch[~signal])
            pairs = (np.searchsorted(background, s_torch[signal] + close, "right")
                     - np.searchsorted(background, s_torch[signal] - close, "left")).sum()
            n_pairs = signal.sum() * (~signal).sum()
            difference = abs(onnx[name][disc]["DeepJet"]["auc"] - taggers["DeepJet"]["auc"])
            assert difference <= max(1e-6, pairs / n_pairs) + 1e-12, (name, disc, difference)
            # the allowance stays small enough for the comparison to mean something (the
            # number of such close pairs varies with the training's float rounding)
            assert pairs <= max(3, 1e-3 * n_pairs), (name, disc, pairs, n_pairs)

    refused = chain("InferenceTask", *training, *test, "--backend", "onnx", "--test-attack",
                    "fgsm", "--test-attack-magnitude", 0.05, check=False)
    assert refused.returncode != 0
    assert "--backend onnx cannot run --test-attack" in refused.stdout + refused.stderr


def test_readme_onnx_example_runs(chain, monkeypatch, capsys):
    """The README's example evaluates model.onnx on one ntuple jet as PyTorch does."""
    import torch

    from utils.torch.inference import load_trained_model
    from utils.torch.run import build_model

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("<!-- onnx-example -->\n```python\n", 1)[1].split("```", 1)[0]
    export = chain.data / "ExportONNXTask" / "demo" / "small" / "small" / "DeepJet" / \
        "epochs_2" / "nominal"
    if not (export / "model.onnx").exists():  # run alone: export first
        chain("ExportONNXTask", "--config", "demo", "--dataset-version", "small",
              "--training-version", "small", "--model-name", "DeepJet", "--epochs", 2,
              "--batch-size", 256, *SMALL)
    ntuple = next((chain.data / "GenerateSamplesTask").rglob("TT_*.root"))
    monkeypatch.chdir(export)
    namespace = {"ntuple": str(ntuple)}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "(p_b + p_bb + p_lepb) / (p_b + p_bb + p_lepb + p_c + p_uds + p_g) =" in \
        capsys.readouterr().out
    feeds, probabilities = namespace["feeds"], namespace["probabilities"]
    assert feeds["cpf"].shape == (1, 25, 16) and feeds["global"].shape == (1, 15)
    config = load_config("demo")
    model, classes = build_model(config, "DeepJet")
    trained = chain.data / "TrainingTask" / "demo" / "small" / "small" / "DeepJet" / \
        "epochs_2" / "nominal" / "best_model.pt"
    load_trained_model(model, trained, torch.device("cpu"), classes)
    with torch.no_grad():
        expected = model.eval()({g: torch.from_numpy(x) for g, x in feeds.items()})
    assert np.abs(probabilities - expected.softmax(-1).numpy()).max() <= 1e-5


def test_complete_chain_refuses_other_upstream_values_and_changed_checkpoints(chain):
    """A complete ROCCurveTask still checks the tasks it needs: a training option that
    contradicts the stored training, or a checkpoint changed since the inference (e.g. by
    --extend-training), is an error instead of a silent reuse of the old results; the
    advised --remove-output 1,a makes them again from the new checkpoint. (The chain's
    inference and ROC curves are then those of the changed checkpoint: keep this test last.)"""
    import torch

    other = chain("ROCCurveTask", *CHAIN, *SMALL, "--learning-rate", 0.5, check=False)
    log = other.stdout + other.stderr
    assert other.returncode != 0 and "TrainingTask outputs in" in log
    assert "--learning-rate: '0.001' -> '0.5'" in log
    assert "found while checking what the finished ROCCurveTask needs: to use that result, " \
        "leave out the options that differ" in log

    training = Path("TrainingTask", "demo", "small", "small", "DeepJet", "epochs_2", "nominal")
    checkpoint = chain.data / training / "best_model.pt"
    state = torch.load(checkpoint, weights_only=True)
    weights = state["model_state_dict"]
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 1e-3  # as a continued training would
    torch.save(state, checkpoint)
    stale = chain("ROCCurveTask", *CHAIN, *SMALL, check=False)
    log = stale.stdout + stale.stderr
    assert stale.returncode != 0 and "InferenceTask outputs in" in log
    assert f"were made from {training / 'best_model.pt'}, which has changed since" in log
    demo = chain("DemoRun", "--version", "small", "--epochs", 2, "--batch-size", 256, *SMALL,
                 check=False)  # the preset's summary too
    assert demo.returncode != 0 and "has changed since" in demo.stdout + demo.stderr
    chain("ROCCurveTask", *CHAIN, *SMALL, "--remove-output", "1,a")
    again = chain("ROCCurveTask", *CHAIN, *SMALL)
    assert "ran successfully" in again.stdout + again.stderr
    recorded = json.loads((_dir(chain, "InferenceTask") / "parameters.json").read_text())
    assert recorded["made_from"] == {str(training / "best_model.pt"): file_sha256(checkpoint)}
    assert chain("ROCCurveTask", *CHAIN, *SMALL).returncode == 0  # now complete
