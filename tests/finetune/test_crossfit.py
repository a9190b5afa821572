"""Cross-fitted fine-tuning: folds, the full or averaged model for the other rows, resume of a killed fold.

The multi-worker tests (``slow``) fine-tune on 2 CPU workers with gloo, with torch AdamW so no
DeepSpeed optimizer op is compiled (only DeepSpeed's CPU shared-memory comm op, once, cached in
TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from finetune_helpers import dying_after_first_checkpoint, killed_marker, text_job

from mer.config import ConfigError, FinetuneConfig, job_from_dict
from mer.errors import MerError
from mer.finetune.stage import finetune_settings


# --- cross-fitted fine-tuning ----------------------------------------------------
def test_assign_folds_stratified_seeded_and_role_free():
    from mer.finetune.crossfit import assign_folds

    labels = np.repeat(np.arange(6), [10, 7, 5, 3, 2, 1])  # a shifted prior: rare classes below the fold count
    fold = assign_folds(labels, 5, seed=0)
    assert sorted(np.bincount(fold)) == [5, 5, 6, 6, 6]
    for label in range(6):  # stratified: each class spread as evenly as it can be
        counts = np.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1, (label, counts)
    np.testing.assert_array_equal(fold, assign_folds(labels, 5, seed=0))  # deterministic
    assert not np.array_equal(fold, assign_folds(labels, 5, seed=1))  # seeded
    with pytest.raises(MerError, match="finetune.folds=5: only 4 labeled rows"):
        assign_folds(labels[:4], 5, seed=0)


def test_crossfit_config_values():
    assert FinetuneConfig().folds == 5 and FinetuneConfig().crossfit_other == "full"
    with pytest.raises(ConfigError, match="finetune.folds: expected a fold count >= 2"):
        job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"folds": -1}})
    assert job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"crossfit_other": "average"}})
    with pytest.raises(ConfigError, match="finetune.crossfit_other: expected full or average, got 'mean'"):
        job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"crossfit_other": "mean"}})


def test_crossfit_pseudo_rows_go_into_folds(tmp_path, text_manifest, tiny_llama, monkeypatch):
    """Accepted pseudo-labels are fold rows like train rows: extracted by a fold model that did not train on them."""
    from mer.finetune import crossfit as cf
    from mer.store import open_store

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 2}, folds=3, pseudo_labels="st1")
    open_store(job.store).write_pseudo_labels(pd.DataFrame({
        "sample_id": ["unlabeled_00", "unlabeled_01"], "run_id": "st1", "round": 0, "label": ["sad", "happy"],
        "confidence": 0.95,
    }))
    trained = []

    def fake_finetune(job, examples, out, name, worker_loop):  # what each model would train on, no training
        out.mkdir(parents=True, exist_ok=True)
        trained.append((name, set(examples["sample_id"])))
        return {"out": str(out), "skipped": True, "examples": len(examples)}

    monkeypatch.setattr(cf, "finetune", fake_finetune)
    record = cf.read_record(cf.crossfit(finetune_settings(job), echo=lambda line: None)["out"])
    assert trained[0] == ("finetune_text", set(record["full"]["train_ids"])) and len(trained[0][1]) == 26
    assert trained[1:] == [(f"finetune_text_fold{k}", set(fold["train_ids"])) for k, fold in enumerate(record["folds"])]
    ids = ["train_00", "unlabeled_00", "unlabeled_01", "unlabeled_02", "test_00"]
    who = cf.extractors(record, ids)
    assert who["unlabeled_00"].startswith("folds/") and who["unlabeled_01"].startswith("folds/")
    assert who["unlabeled_02"] == who["test_00"] == cf.FULL  # no pseudo-label: the full model's
    for sid, path in who.items():
        assert sid not in cf.training_ids(record, path), (sid, path)


def test_crossfit_average_extracts_other_rows_with_the_mean_of_the_fold_models(
        tmp_path, ray_local, text_manifest, tiny_llama, monkeypatch):
    """``crossfit_other: average``: no full model; unlabeled and test rows get the fold models' mean features.

    The fold "fine-tunes" are the tiny model with seeded noise on its weights
    (no DeepSpeed); extraction, the record and the encoder are the real ones.
    """
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaForCausalLM

    from mer.config import with_values
    from mer.encoders import build_encoder, encoder_version
    from mer.encoders.fold_average import FoldAverage
    from mer.finetune import crossfit as cf
    from mer.finetune.stage import run as finetune_stage
    from mer.store import open_store

    trained = []

    def fake_finetune(job, examples, out, name, worker_loop):  # a distinct model per fold, no training
        trained.append(name)
        model = LlamaForCausalLM.from_pretrained(tiny_llama)
        torch.manual_seed(len(trained))
        with torch.no_grad():
            for weight in model.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
        return {"out": str(out), "skipped": False, "examples": len(examples), "losses": [1.0], "seconds": 0}

    monkeypatch.setattr(cf, "finetune", fake_finetune)
    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 2}, folds=2, crossfit_other="average")
    out = cf.crossfit_dir(finetune_settings(job))
    out.mkdir(parents=True)
    (out / "model.safetensors").write_text("an earlier run's full model")
    summary = finetune_stage(job, echo=lambda line: None)

    assert trained == ["finetune_text_fold0", "finetune_text_fold1"] and summary["full"] is None
    assert sorted(p.name for p in out.iterdir()) == [cf.RECORD_FILE, cf.FOLDS_DIR]  # the stale full model is gone
    record = cf.read_record(out)
    assert record["other"] == "average" and record["full"] is None
    spec = with_values(job, summary["job_updates"]).encoders["text"]
    encoder = build_encoder(spec)
    assert isinstance(encoder, FoldAverage) and len(encoder.members) == 2
    assert encoder.version == encoder_version(spec) == summary["extract"]["text"]["version"]
    assert summary["extract"]["text"]["by_model"] == {"folds/0": 12, "folds/1": 12, cf.AVERAGE: 12}

    stored = open_store(job.store).read("hf_text", encoder.version)
    who = cf.extractors(record, stored.ids)
    assert set(who[stored.split != "train"]) == {cf.AVERAGE}
    assert cf.training_ids(record, cf.AVERAGE) == set(stored.ids[stored.split == "train"])
    rows = pd.read_csv(job.manifest, keep_default_na=False).set_index("sample_id")
    folds = [build_encoder(with_values(job, {"encoders.text.model": str(out / f"folds/{k}")}).encoders["text"])
             for k in range(2)]
    for sid, vector in zip(stored.ids, stored.vector):
        payload = [folds[0].prepare(rows.loc[sid].to_dict())]
        per_fold = [fold.encode(payload)[0][0] for fold in folds]
        expected = np.mean(per_fold, axis=0) if who[sid] == cf.AVERAGE else per_fold[int(Path(who[sid]).name)]
        np.testing.assert_allclose(vector, expected, atol=1e-5, err_msg=sid)
    assert not np.allclose(per_fold[0], per_fold[1], atol=1e-3)  # the folds differ: an average is not either one


@pytest.fixture(scope="module")
def crossfit_run(tmp_path_factory, ray_local, text_manifest, tiny_llama):
    """One cross-fitted run (2 folds, ZeRO-2, 2 epochs) whose fold-1 worker is killed once."""
    from mer.finetune.stage import run as finetune_stage

    job = text_job(tmp_path_factory.mktemp("crossfit"), text_manifest, tiny_llama, {"stage": 2}, folds=2, epochs=2)
    lines = []
    summary = finetune_stage(job, lines.append, worker_loop=dying_after_first_checkpoint)
    return job, summary, lines


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crossfit_no_train_row_read_from_a_model_that_trained_on_it(crossfit_run):
    from pathlib import Path

    from mer.config import with_values
    from mer.encoders import build_encoder, encoder_version
    from mer.finetune.crossfit import FULL, extractors, read_record, training_ids
    from mer.store import open_store

    job, summary, _ = crossfit_run
    out = Path(summary["out"])
    record = read_record(out)
    after = summary["extract"]["text"]
    stored = open_store(job.store).read("hf_text", after["version"])
    assert len(stored) == 36 and after["failed"] == 0
    assert after["by_model"] == {"folds/0": 12, "folds/1": 12, FULL: 12}

    who = extractors(record, stored.ids)
    for sid, path in who.items():
        assert sid not in training_ids(record, path), (sid, path)
    train = stored.split == "train"
    assert set(who[train]) == {"folds/0", "folds/1"} and set(who[~train]) == {FULL}
    held = [set(fold["extracted"]) for fold in record["folds"]]
    assert held[0] | held[1] == set(stored.ids[train]) and not held[0] & held[1]
    labels = pd.read_csv(job.manifest).set_index("sample_id")["label"]
    for ids in held:  # stratified: 4 rows per label -> 2 per label and fold
        assert labels[sorted(ids)].value_counts().tolist() == [2] * 6

    # The record is what happened: each stored vector is its recorded model's, and not the others'.
    rows = pd.read_csv(job.manifest, keep_default_na=False).set_index("sample_id")
    vectors = dict(zip(stored.ids, stored.vector))
    for path in ("folds/0", "folds/1", FULL):
        sid = next(s for s, p in who.items() if p == path)
        for model in ("folds/0", "folds/1", FULL):
            encoder = build_encoder(with_values(job, {"encoders.text.model": str(out / model)}).encoders["text"])
            vector = encoder.encode([encoder.prepare(rows.loc[sid].to_dict())])[0][0]
            assert np.allclose(vector, vectors[sid], atol=1e-5) == (model == path), (sid, path, model)

    # a new encoder version: neither the frozen model's nor that of the full model alone (= a single fine-tune)
    single = out.parent / "single"
    single.mkdir()
    for file in out.iterdir():
        if file.is_file() and file.name != "crossfit.json":
            (single / file.name).write_bytes(file.read_bytes())
    versions = {after["version"], encoder_version(job.encoders["text"]),
                encoder_version(with_values(job, {"encoders.text.model": str(single)}).encoders["text"])}
    assert len(versions) == 3
    assert summary["job_updates"] == {"encoders.text.model": str(out)}
    assert after["version"] == encoder_version(with_values(job, summary["job_updates"]).encoders["text"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crossfit_rerun_skips_finished_folds(crossfit_run):
    from mer.finetune.stage import run as finetune_stage
    from mer.store import open_store

    job, first, first_lines = crossfit_run
    store = open_store(job.store)
    table_version = store.read("hf_text", first["extract"]["text"]["version"]).table_version
    lines = []
    again = finetune_stage(job, lines.append)  # the plain loop: it would not die, but must not even run
    assert again["skipped"] and again["full"]["skipped"] and all(f["skipped"] for f in again["fold_models"])
    assert [f["losses"] for f in again["fold_models"]] == [f["losses"] for f in first["fold_models"]]
    assert again["extract"]["text"]["version"] == first["extract"]["text"]["version"]
    assert again["extract"]["text"]["written"] == 0 and again["extract"]["text"]["skipped"] == 36
    assert store.read("hf_text", again["extract"]["text"]["version"]).table_version == table_version
    # progress: one line per model when training, one per model when extracting
    assert [line.split(":")[0].strip() for line in first_lines[:3]] == ["full model", "fold 1/2", "fold 2/2"]
    assert all("finished before, skipped" in line for line in lines[:3])
    assert [line.rsplit("[", 1)[1] for line in lines[3:]] == ["fold 1/2 model]", "fold 2/2 model]", "full model]"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crossfit_killed_fold_worker_resumes_from_its_checkpoint_to_the_clean_weights(crossfit_run):
    from pathlib import Path

    from mer.finetune.model import META_FILE

    job, summary, _ = crossfit_run
    out = Path(summary["out"])
    fingerprints = [json.loads((out / p / META_FILE).read_text())["fingerprint"] for p in ("folds/0", "folds/1", ".")]
    assert killed_marker(fingerprints[1]).exists()  # the fault fired: fold 1's rank 0 died after epoch 1
    assert not killed_marker(fingerprints[0]).exists() and not killed_marker(fingerprints[2]).exists()
    killed = summary["fold_models"][1]
    # Ray Train restarted the run from its epoch-0 checkpoint, and it trained to the end: 2 epochs x 2 steps
    # (12 rows, 2 workers x 4); the losses of epoch 0 come from the checkpoint
    assert not killed["skipped"] and killed["resumed_at_epoch"] == 1
    assert len(killed["losses"]) == 4 and killed["step"] == 4
    assert killed["export_max_abs_diff"] < 1e-5
    assert summary["fold_models"][0]["resumed_at_epoch"] is None and summary["full"]["resumed_at_epoch"] is None
    killed_marker(fingerprints[1]).unlink()
    # nothing of the runs is left in Ray's storage once their exports are copied out
    assert not any((Path(job.run_dir) / "ray_train").iterdir())

    # The same fold trained by the plain loop, never stopped: the same losses and the same weights.
    from safetensors.torch import load_file

    from mer.finetune.crossfit import assign_folds
    from mer.finetune.data import labeled_examples
    from mer.finetune.launch import finetune

    examples = labeled_examples(finetune_settings(job))
    train = examples[assign_folds(examples["label"], 2, job.finetune.seed) != 1]
    clean = finetune(finetune_settings(job), train, Path(job.run_dir) / "clean_fold1", "clean_fold1")
    assert clean["resumed_at_epoch"] is None and clean["losses"] == killed["losses"]
    weights = [load_file(Path(folder) / "model.safetensors") for folder in (clean["out"], out / "folds/1")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
