"""Self-training rounds: pseudo-label table, resume, and a real two-round run."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fake_rounds import CV, LABELS, PLAN, TEST, UNLABELED, _probs, fake_training, job, run_id, run_rounds  # noqa: F401
from mer.config import SelftrainConfig, job_from_dict
from mer.store import open_store
from mer.train.stage import fit_settings
from mer.voting import final_vote

def test_pseudo_label_table_and_idempotent_rerun(job, fake_training):
    summary = run_rounds(job, echo=lambda _: None)
    rid = run_id(job)
    table = open_store(job.store).read_pseudo_labels(rid)
    # Round 0 labels u0..u3 (u4, u5 never confident): prior gives u0 and u3 to the audio model.
    got = dict(zip(table["sample_id"], table["label"]))
    assert got == {"u0": "sad", "u1": "happy", "u2": "angry", "u3": "worried"}
    assert set(table["round"]) == {0} and set(table["run_id"]) == {rid}
    row = table.set_index("sample_id").loc["u0"]
    assert row["votes"] == "agt:happy,attention:happy,unimodal:sad" and row["confidence"] == pytest.approx(0.95)
    # Round 1 finds nothing new (< min_new): stop; its models trained on the 4 labels are final.
    assert [r["added"] for r in summary["rounds"]] == [4, 0]
    assert summary["stopped"].startswith("round 1 added 0")
    assert summary["rounds"][0]["pseudo_accuracy"] == pytest.approx(1.0)
    assert summary["rounds"][0]["added_per_class"]["worried"] == 1
    assert sorted(fake_training) == sorted([(m, s, n) for n in (0, 4) for m in PLAN for s in (0, 1)])
    run_dir = Path(job.run_dir)
    final = pd.read_csv(run_dir / "predictions_test.csv")
    assert list(final.columns) == ["sample_id", "label", *[f"p_{k}" for k in LABELS]]
    # test vote (threshold 0): t0 and t3 go to the audio model's prior classes
    assert final.set_index("sample_id")["label"].to_dict() == {
        "t0": "sad", "t1": "happy", "t2": "angry", "t3": "worried", "t4": "sad", "t5": "happy"
    }
    assert json.loads((run_dir / "selftrain.json").read_text())["run_id"] == rid

    # A rerun trains nothing, writes no duplicate, and gives the same result.
    fake_training.clear()
    again = run_rounds(job, echo=lambda _: None)
    assert fake_training == []
    assert len(open_store(job.store).read_pseudo_labels(rid)) == 4
    assert again["rounds"] == summary["rounds"]


def test_a_changed_config_is_a_new_run(job, fake_training):
    run_rounds(job, echo=lambda _: None)
    majority = job_from_dict({**_as_dict(job), "selftrain": {**_as_dict(job)["selftrain"], "voting": "majority"}})
    assert run_id(majority) != run_id(job)
    fake_training.clear()
    run_rounds(majority, echo=lambda _: None)
    # round 0 fits are shared (same training data); round 1 trains on different labels
    assert all(n == 4 for _, _, n in fake_training) and len(fake_training) == 6
    labels = open_store(job.store).read_pseudo_labels(run_id(majority))
    assert dict(zip(labels["sample_id"], labels["label"]))["u0"] == "happy"


def test_cv_voters_follow_the_model_that_cross_validates_best(job, fake_training):
    """``selftrain.voters: cv``: attention and the audio model trail agt by > cv_margin, so agt alone labels."""
    cv_job = job_from_dict({**_as_dict(job), "selftrain": {**_as_dict(job)["selftrain"], "voters": "cv"}})
    summary = run_rounds(cv_job, echo=lambda _: None)
    first = summary["rounds"][0]
    assert first["models_cv"] == CV and first["vote_weights"] == {"agt": 0.9, "attention": 0.0, "unimodal": 0.0}
    labels = open_store(job.store).read_pseudo_labels(run_id(cv_job))
    assert dict(zip(labels["sample_id"], labels["label"])) == dict(zip(UNLABELED[:4], PLAN["agt"][:4]))
    final = pd.read_csv(Path(job.run_dir) / "predictions_test.csv")
    assert final["label"].tolist() == PLAN["agt"]  # the test vote is agt's too
    assert first["test_weighted_f1_other_voters"] is not None  # the paper's vote on the same models, for the report


def _as_dict(job):
    import dataclasses

    return dataclasses.asdict(job)


def test_prior_voting_needs_an_audio_unimodal_model(job):
    from mer.runner import check_job

    bad = job_from_dict({**_as_dict(job), "stages": ["selftrain"],
                         "encoders": {"audio": {"alias": "logmel"}, "text": {"alias": "minilm"}},
                         "train": {**_as_dict(job)["train"], "unimodal_role": "text"}})
    with pytest.raises(Exception, match="unimodal_role is 'text'"):
        check_job(bad)


def test_vote_test_fills_every_sample():
    tables = {m: _probs(m, TEST, 0.5) for m in PLAN}
    job = job_from_dict({"name": "x", "manifest": "m.csv", "selftrain": {"test_threshold": 0.9}})
    out = final_vote(tables, LABELS, job.selftrain)
    # nobody confident at 0.9: the soft arg-max labels everything
    assert out["label"].notna().all() and len(out) == len(TEST)
    assert np.allclose(out[[f"p_{k}" for k in LABELS]].sum(axis=1), 1.0)


def test_test_vote_uses_the_pseudo_label_threshold_by_default():
    """Unsure audio guesses (p 0.8 < tau 0.9) do not override on test unless test_threshold is 0."""
    tables = {m: _probs(m, TEST, 0.8) for m in PLAN}
    default = SelftrainConfig(threshold=0.9)
    assert final_vote(tables, LABELS, default)["label"].iloc[0] == "happy"  # soft arg-max: agt + attention
    every = SelftrainConfig(threshold=0.9, test_threshold=0.0)
    assert final_vote(tables, LABELS, every)["label"].iloc[0] == "sad"  # the audio model's prior class


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_round_run_on_a_real_demo_corpus(tmp_path, ray_local):
    """Round 0 (supervised) labels the unlabeled split, round 1 retrains on those labels."""
    from mer.corpus.demo import make_demo_corpus
    from mer.runner import run_job

    manifest = make_demo_corpus(tmp_path / "demo", n_train=60, n_unlabeled=40, n_test=30, seed=3, workers=1)
    job = job_from_dict(
        {
            "name": "st_real",
            "manifest": str(manifest),
            "store": str(tmp_path / "store"),
            "run_dir": str(tmp_path / "run"),
            "truth": str(tmp_path / "demo" / "unlabeled_truth.csv"),
            "encoders": {"audio": {"alias": "logmel"}, "text": {"alias": "minilm"}},
            "stages": ["validate", "extract", "train", "selftrain", "evaluate", "report"],
            "train": {"model": "agt", "epochs": 8, "seeds": [0, 1], "patience": 8},
            "selftrain": {"rounds": 1, "threshold": 0.2, "models": ["agt", "unimodal", "linear"], "min_new": 1,
                          "voters": "cv"},
            "execution": {"concurrent_fits": 2},
        }
    )
    results = run_job(job, echo=lambda _: None)
    run_dir = Path(job.run_dir)
    summary = json.loads((run_dir / "selftrain.json").read_text())
    added = [r["added"] for r in summary["rounds"]]
    assert added[0] > 0 and results["selftrain"]["pseudo_labels"] == sum(added)
    table = open_store(job.store).read_pseudo_labels(summary["run_id"])
    assert len(table) == sum(added) and table["sample_id"].is_unique
    assert set(table["label"]) <= set(LABELS) and (table["confidence"] > 0.2).all()
    truth = pd.read_csv(tmp_path / "demo" / "unlabeled_truth.csv")
    assert set(table["sample_id"]) <= set(truth["sample_id"])
    # the second round trained on the first round's labels
    assert summary["rounds"][1]["trained_on"] == added[0]
    assert 0 <= summary["rounds"][0]["pseudo_accuracy"] <= 1
    final = pd.read_csv(run_dir / "predictions_test.csv")
    assert len(final) == 30 and final["label"].isin(LABELS).all()
    md = (run_dir / "report.md").read_text()
    for section in ("## Summary", "## Self-training rounds", "## Self-training vs supervised", "## Per-class results", "## Plots"):
        assert section in md
    assert (run_dir / "waf_per_round.png").exists() and (run_dir / "pseudo_labels_per_round.png").exists()
    assert set(summary["rounds"][0]["models_cv"]) == {"agt", "unimodal", "linear"}  # linear votes like any model
    final = summary["final_checkpoints"]  # what mer predict --run loads: the last round's finished fits
    assert set(final) == {"agt", "unimodal", "linear"} and all((run_dir / p / "done.json").exists()
                                                             for paths in final.values() for p in paths)
    assert "| linear |" in md  # the linear floor beside the model

    # The same job on the same data, from a fresh store and run folder, fits running two at a time:
    # byte-identical predictions and pseudo-labels.
    again = job_from_dict({**_as_dict(job), "store": str(tmp_path / "store2"), "run_dir": str(tmp_path / "run2")})
    run_job(again, echo=lambda _: None)
    for name in ("predictions_test.csv", "predictions_test_agt.csv", "predictions_unlabeled.csv",
                 "predictions_test_linear.csv"):
        assert (tmp_path / "run2" / name).read_bytes() == (run_dir / name).read_bytes(), name
    first = open_store(job.store).read_pseudo_labels(summary["run_id"]).sort_values("sample_id")
    second = open_store(again.store).read_pseudo_labels(run_id(again)).sort_values("sample_id")
    assert first[["sample_id", "label", "votes"]].to_numpy().tolist() == second[["sample_id", "label", "votes"]].to_numpy().tolist()


def test_ablation_cells_feed_the_report(job, fake_training, monkeypatch):
    """The ablation runner's orchestration with fake training and extraction."""
    from mer.report.report import build_report
    from mer.experiments import ablation

    from mer.encoders import FeatureRef
    from mer.experiments import robustness

    extracted = []
    monkeypatch.setattr(robustness, "corrupted_features",
                        lambda j, role, c, echo: extracted.append(f"{role} {c}") or {role: FeatureRef(role, "x", str(c))})
    job = job_from_dict({**_as_dict(job), "ablation": {"fusion_models": ["attention", "agt"], "thresholds": [0.9, 0.99]},
                         "robustness": {"conditions": ["white@10", "audio:drop"]},
                         "encoders": {"audio": {"alias": "logmel"}, "text": {"alias": "minilm"}}})
    summary = ablation.run(job, echo=lambda _: None)
    assert summary["axes"] == {"fusion": 3, "voting": 4, "threshold": 2, "balance": 0, "corruption": 6}
    assert extracted == ["audio white@10", "audio drop"]
    result = json.loads((Path(job.run_dir) / "ablation.json").read_text())
    cells = {c["variant"]: c for c in result["axes"]["threshold"]}
    # tau 0.99: no model is that confident, nothing is added
    assert cells["tau = 0.9"]["added"] == [4.0] and cells["tau = 0.99"]["added"] == [0.0]
    assert cells["tau = 0.9"]["pseudo_accuracy"] == [1.0]
    assert len(result["axes"]["fusion"][0]["waf"]) == 2  # one value per seed
    md = build_report(job.run_dir) and (Path(job.run_dir) / "report.md").read_text()
    assert "### Pseudo-label threshold sweep" in md and "| tau = 0.99 |" in md


def test_round_0_reuses_the_train_stage_fits(job, fake_training):
    """The train stage and round 0 share the fit cache: agt's seeds are trained once."""
    from mer.train.cache import fit_many

    stage = fit_many(fit_settings(job), [("agt", 0), ("agt", 1)])
    assert all(p.parent == Path(job.run_dir) / "checkpoints" for p in stage.values())
    fake_training.clear()
    run_rounds(job, echo=lambda _: None)
    round0 = [(m, s) for m, s, n in fake_training if n == 0]
    assert sorted(round0) == [("attention", 0), ("attention", 1), ("unimodal", 0), ("unimodal", 1)]


def test_balanced_variants_score_pseudo_labels_against_their_own_truth(job, fake_training, monkeypatch, tmp_path):
    from mer.experiments import ablation

    monkeypatch.setattr("mer.extract.stage.run", lambda j, echo=print: open_store(j.store) and {})
    monkeypatch.setattr(ablation, "corruption_cells", lambda j, fits, echo: [])
    other = tmp_path / "balanced_truth.csv"
    pd.DataFrame({"sample_id": UNLABELED, "label": "neutral"}).to_csv(other, index=False)
    report = {"fusion_models": ["attention", "agt"], "thresholds": [], "balanced_manifest": job.manifest,
              "balanced_truth": str(other)}
    ablation.run(job_from_dict({**_as_dict(job), "ablation": report}), echo=lambda _: None)
    cells = {c["variant"]: c for c in json.loads((Path(job.run_dir) / "ablation.json").read_text())["axes"]["balance"]}
    assert cells["shifted: + prior-knowledge voting"]["pseudo_accuracy"] == [1.0]
    assert cells["balanced: + prior-knowledge voting"]["pseudo_accuracy"] == [0.0]


def test_execution_keys_and_the_stage_s_choice_of_fits_reuse_the_fit_cache(job, fake_training):
    from mer.train.cache import fit_cached

    first = fit_cached(fit_settings(job), "agt", 0)
    other = job_from_dict({**_as_dict(job), "execution": {"concurrent_fits": 1, "checkpoint_every_s": 0,
                                                          "num_workers": 2, "memory_budget_gb": 0.5},
                           "train": {**_as_dict(job)["train"], "model": "attention", "seeds": [5], "baseline": None}})
    assert fit_cached(fit_settings(other), "agt", 0) == first and len(fake_training) == 1
    changed = job_from_dict({**_as_dict(job), "train": {**_as_dict(job)["train"], "lr": 0.5}})
    assert fit_cached(fit_settings(changed), "agt", 0) != first and len(fake_training) == 2
