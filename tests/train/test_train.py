"""Training with Ray Train on a real store folder of synthetic separable features.

One module-scoped Ray instance (2 CPUs, 2 fake GPUs) and one store. Three Ray Train
runs (the train stage, a failure-injected rerun, a streaming rerun); each is ~20 s
of Ray Train start-up on an idle 2-core machine, minutes on a busy one.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, f1_score

from mer.config import job_from_dict
from mer.train.stage import fit_settings
from synthetic import write_synthetic_features

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def make_job(root, run="run", execution=None, **train):
    train = {"epochs": 8, "seeds": [0], "hidden": 32, "heads": 2, "batch_size": 32, "patience": 20, **train}
    return job_from_dict({
        "name": "t", "manifest": str(root / "none.csv"), "store": str(root / "store"), "run_dir": str(root / run),
        "encoders": {"audio": {"alias": "logmel", "seq_len": 4}, "video": {"alias": "frames", "seq_len": 4},
                     "text": {"alias": "minilm", "seq_len": 0}},
        "train": train, "execution": execution or {},
    })


@pytest.fixture(scope="module")
def root(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("train")
    write_synthetic_features(make_job(root), {"train": 300, "test": 120, "unlabeled": 60},
                             seed=0, missing_fraction=0.1)
    return root


@pytest.fixture(scope="module")
def stage_summary(root):
    """The ``train`` stage of a one-seed job: the fit every other test compares with."""
    from mer.train.stage import run

    return run(make_job(root))


@pytest.fixture(scope="module")
def trained(stage_summary):
    return Path(stage_summary["checkpoints"][0])


def truth(root, split="test"):
    data = fit_settings(make_job(root)).load(split, streaming=False)
    return pd.DataFrame({"sample_id": data.ids, "label": data.label})


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(900)
def test_tiny_run_well_above_chance_and_checkpoint_config(root, trained):
    from mer.train.predict import predict

    pred = predict(trained, None, "test")
    t = truth(root).merge(pred, on="sample_id", suffixes=("_true", "_pred"))
    assert len(t) == 120
    waf = f1_score(t["label_true"], t["label_pred"], average="weighted")
    assert waf > 0.6  # chance is ~0.17 for six balanced classes
    probs = pred[[f"p_{c}" for c in LABELS]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "agt" and config["labels"] == LABELS and config["weights"] == ["model.safetensors"]
    assert set(config["read"]["tables"]) == {"audio", "video", "text"}
    for t in config["read"]["tables"].values():
        assert t["table"].startswith(f"features__{t['alias']}__") and t["table_version"] >= 1
    assert config["encoders"]["audio"]["alias"] == "logmel"
    assert len(config["history"][0]) == 8


@pytest.mark.timeout(600)
def test_checkpoint_round_trip_identical_predictions(root, trained, tmp_path):
    from mer.train.checkpoint import load_models, save_weights
    from mer.train.predict import predict

    first = predict(trained, None, "test")
    config, (model,) = load_models(trained)
    copy = tmp_path / "copy"
    copy.mkdir()
    save_weights(model, copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(config))
    again = predict(copy, None, "test")
    pd.testing.assert_frame_equal(first, again, check_exact=True)


def test_a_worker_no_node_can_hold_is_an_error_not_a_wait(root):
    """Ray Train would retry its worker-group start forever; mer says what is missing at once."""
    from mer.errors import MerError
    from mer.placement import worker_resources
    from mer.train.fit import fit, scaling

    job = make_job(root, run="run_unplaceable", execution={"resources_per_worker": {"CPU": 1, "trainer": 1}})
    assert worker_resources(scaling(job.execution)) == {"CPU": 1, "trainer": 1}
    with pytest.raises(MerError, match=r"^1 Ray Train worker\(s\) needing CPU: 1, trainer: 1 each cannot be placed: "
                                       r"the live nodes hold 0 \(nodes have: CPU: 2, GPU: 2"):
        fit(fit_settings(job), "agt", 0, root / "ckpt_unplaceable")
    with pytest.raises(MerError, match="3 Ray Train worker.* needing GPU: 1 each .* hold 2 .*execution.num_workers"):
        fit(fit_settings(make_job(root, run="run_unplaceable", execution={"use_gpu": True, "num_workers": 3})),
            "agt", 0, root / "ckpt_unplaceable")
    assert not (root / "run_unplaceable").exists() and not (root / "ckpt_unplaceable").exists()


@pytest.mark.timeout(900)
def test_resume_after_injected_worker_failure_matches_clean_run(root, trained):
    """The rank-0 worker process dies at epoch 3; Ray restarts it from the last checkpoint."""
    from faults import dying_train_loop

    from mer.train.fit import fit

    resumed = fit(fit_settings(make_job(root, run="run_fail", execution={"checkpoint_every_s": 0})), "agt", 0,
                  root / "ckpt_fail", worker_loop=dying_train_loop)
    config = json.loads((resumed / "config.json").read_text())
    assert config["resumed_at"][0] and 1 <= config["resumed_at"][0][0] <= 3
    assert [h["epoch"] for h in config["history"][0]] == list(range(8))
    # every random draw derives from (seed, epoch): same weights as the run that never failed
    assert digest(resumed / "model.safetensors") == digest(trained / "model.safetensors")


@pytest.mark.timeout(900)
def test_streaming_and_numpy_paths_same_batches_and_model(root, trained):
    from mer.train.fit import fit

    settings = fit_settings(make_job(root, run="run_stream"))
    numpy_data, stream_data = settings.load(streaming=False), settings.load(streaming=True)
    index = np.arange(0, len(numpy_data), 7)
    a, b = numpy_data.batch(index), stream_data.batch(index)
    for role in a:
        for key in a[role]:
            assert torch.equal(a[role][key], b[role][key]), (role, key)
    streamed = fit(settings, "agt", 0, root / "ckpt_stream", streaming=True)
    configs = [json.loads((c / "config.json").read_text()) for c in (trained, streamed)]
    assert configs[1]["read"]["streaming"] is True and configs[0]["read"]["streaming"] is None  # forced / by size
    assert configs[1]["read_path"] == ["streaming"] and configs[0]["read_path"] == ["numpy"]
    assert [h["val_f1"] for h in configs[0]["history"][0]] == [h["val_f1"] for h in configs[1]["history"][0]]
    assert digest(streamed / "model.safetensors") == digest(trained / "model.safetensors")


@pytest.mark.timeout(600)
def test_predict_and_evaluate_cli_against_sklearn(root, trained, tmp_path):
    from mer.cli import cli

    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(trained), "--split", "test", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out, dtype={"sample_id": str})
    assert list(pred.columns) == ["sample_id", "label"] + [f"p_{c}" for c in LABELS]
    truth_csv = tmp_path / "truth.csv"
    truth(root).to_csv(truth_csv, index=False)
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--truth", str(truth_csv), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    t = pd.read_csv(truth_csv, dtype=str).merge(pred, on="sample_id", suffixes=("_true", "_pred"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(t["label_true"], t["label_pred"], average="weighted"))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(t["label_true"], t["label_pred"]))
    assert f"{metrics['weighted_f1']:.4f}" in result.output
    sad = t[t["label_true"] == "sad"]
    assert metrics["per_class"]["sad"]["support"] == len(sad)
    assert metrics["per_class"]["sad"]["recall"] == pytest.approx((sad["label_pred"] == "sad").mean())
    assert np.sum(metrics["confusion"]) == len(t)
    assert (tmp_path / "eval" / "confusion_test.png").stat().st_size > 1000
    unl = tmp_path / "unl.csv"
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(trained), "--split", "unlabeled", "--out", str(unl)])
    assert result.exit_code == 0 and len(pd.read_csv(unl)) == 60


@pytest.mark.timeout(600)
def test_train_stage_outputs_and_evaluate_stage(root, stage_summary, trained):
    from mer.report.stage import evaluate

    assert trained.parent == root / "run" / "checkpoints" and trained.name.startswith("agt_s0_")
    assert stage_summary["n_test"] == 120 and stage_summary["n_unlabeled"] == 60
    unlabeled = pd.read_csv(root / "run" / "predictions_unlabeled.csv")
    assert list(unlabeled.columns) == ["sample_id", "label"] + [f"p_{c}" for c in LABELS]
    result = evaluate(make_job(root))
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["weighted_f1"] == pytest.approx(result["weighted_f1"]) and metrics["n"] == 120
    assert (root / "run" / "confusion_test.png").exists()
    record = json.loads((root / "run" / "train.json").read_text())
    assert list(record["systems"]) == ["agt", "linear"]  # the linear floor is fitted beside the model
    cv = record["systems"]["agt"]["cv"]
    assert metrics["cv_train"] == cv and cv["model"] == "agt" and cv["scheme"] == "holdout"
    assert cv["per_seed"] == [json.loads((trained / "config.json").read_text())["cv"]["weighted_f1"]]
    linear_ckpt = root / "run" / record["systems"]["linear"]["checkpoints"][0]
    assert json.loads((linear_ckpt / "config.json").read_text())["model"] == "linear"
    t = truth(root).merge(pd.read_csv(root / "run" / "predictions_test_linear.csv"), on="sample_id",
                          suffixes=("_true", "_pred"))
    assert metrics["systems"]["linear"]["test"]["waf"] == [
        pytest.approx(f1_score(t["label_true"], t["label_pred"], average="weighted"), abs=1e-6)]
    assert set(metrics["systems"]["agt"]["test"]) == {"waf", *[f"f1_{c}" for c in LABELS]}
    from mer.report.report import build_report

    report = (root / "run" / "report.md")
    build_report(root / "run")
    assert "| linear |" in report.read_text() and "CV WAF (train)" in report.read_text()


def test_select_cv_publishes_the_system_that_cross_validates_better(root):
    """``train.select: cv``: the published predictor is the higher CV mean on train, and evaluate scores it."""
    from mer.report.stage import evaluate
    from mer.train.stage import run

    job = make_job(root, run="selected", select="cv")
    summary = run(job, echo=lambda _: None)
    record = json.loads((root / "selected" / "train.json").read_text())
    cv = {m: s["cv"]["mean"] for m, s in record["systems"].items()}
    best = max(cv, key=cv.get)
    assert cv["agt"] != cv["linear"] and record["published"] == summary["model"] == best
    predictor = json.loads((root / "selected" / "predictor.json").read_text())
    assert list(predictor["checkpoints"]) == [best]
    pd.testing.assert_frame_equal(pd.read_csv(root / "selected" / "predictions_test.csv"),
                                  pd.read_csv(root / "selected" / f"predictions_test_{best}.csv"))
    evaluate(job, echo=lambda _: None)
    assert json.loads((root / "selected" / "metrics.json").read_text())["cv_train"]["model"] == best


def test_pseudo_labels_join_training_never_validation(root):
    from mer.train.learner import choose_rows, targets_of

    job = make_job(root, val_fraction=0.2)
    data = fit_settings(job).load(streaming=False)
    unl = data.ids[data.split == "unlabeled"][:10]
    extra = pd.DataFrame({"sample_id": unl, "label": "happy"})
    targets = targets_of(data, LABELS, extra)
    rows = choose_rows(data, targets, job.train, 0, None, extra)
    in_train = set(data.ids[rows.train])
    assert set(unl) <= in_train and not set(unl) & (set(data.ids[rows.val]) | set(data.ids[rows.stop]))
    assert (targets[np.isin(data.ids, unl)] == LABELS.index("happy")).all()
    # 300 labeled: 60 scored, 20 % of the other 240 choose the epoch, the rest (and the pseudo-labels) train
    assert len(rows.val) == 60 and len(rows.stop) == 48 and len(rows.train) == 192 + 10
    assert not set(rows.stop) & (set(rows.train) | set(rows.val))
    # present flags follow the store: 10% of video/text rows were left out
    present = data.present()
    assert present["audio"].all() and 0.8 < present["video"].mean() < 0.97


@pytest.mark.timeout(900)
def test_linear_out_of_fold_score_covers_exactly_the_labeled_train_rows(root):
    """5-fold CV of ``linear``: every labeled train row scored once, never a test, unlabeled or pseudo row."""
    from mer.train.cache import fit_cached
    from mer.train.predict import predict

    job = make_job(root, run="cv", folds=5)
    data_train = truth(root, "train")
    unl = truth(root, "unlabeled")["sample_id"][:20]
    pseudo = pd.DataFrame({"sample_id": unl, "label": "happy"})
    ckpt = fit_cached(fit_settings(job), "linear", 0, extra=pseudo)
    config = json.loads((ckpt / "config.json").read_text())
    oof = pd.read_csv(ckpt / "oof_train.csv", dtype={"sample_id": str})
    assert sorted(oof["sample_id"]) == sorted(data_train["sample_id"]) and oof["sample_id"].is_unique
    merged = oof.merge(data_train, on="sample_id")
    assert (merged["target"] == merged["label"]).all()
    waf = f1_score(oof["target"], np.asarray(LABELS)[oof[[f"p_{c}" for c in LABELS]].to_numpy().argmax(1)],
                   average="weighted")
    assert config["cv"] == {"weighted_f1": pytest.approx(waf, abs=1e-5), "rows": 300, "scheme": "5-fold out-of-fold",
                            "chosen_on": "nothing", "grouped": False}
    assert config["weights"] == [f"model_fold{k}.safetensors" for k in range(5)]
    assert [len(h) for h in config["history"]] == [1] * 5  # solved once per fold, no epochs
    pred = predict(ckpt, None, "test")
    t = truth(root).merge(pred, on="sample_id", suffixes=("_true", "_pred"))
    assert f1_score(t["label_true"], t["label_pred"], average="weighted") > 0.6
    pd.testing.assert_frame_equal(pred, predict(ckpt, None, "test"), check_exact=True)
