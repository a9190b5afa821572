"""The official MER2025 / MER2024 layouts in, a challenge submission out, scored as the organisers score it."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mer_cli import run_mer
from sklearn.metrics import f1_score

from mer.corpus.demo_release import HIDDEN_LABELS, make_release_corpus
from mer.corpus.release import import_release

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]



@pytest.fixture(scope="module")
def mer2025(tmp_path_factory):
    return make_release_corpus(tmp_path_factory.mktemp("rel") / "mer2025-dataset", "mer2025", n_train=24,
                               n_unlabeled=8, n_test=8, seed=5, workers=1)


def organisers_score(label_csv: Path, submission_csv: Path) -> float:
    """The organisers' ``score_calculation`` (MERTools ``MER2025_Track1/evaluation.py``), from what it is documented to do:
    read ``name,discrete`` from both files, map each ground-truth name's labels through the six emotions' index,
    and sklearn's weighted F1 over the ground-truth names."""
    emos = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    gt = dict(pd.read_csv(label_csv, dtype=str)[["name", "discrete"]].itertuples(index=False))
    pred = dict(pd.read_csv(submission_csv, dtype=str)[["name", "discrete"]].itertuples(index=False))
    names = list(gt)
    return f1_score([emos.index(gt[n]) for n in names], [emos.index(pred[n]) for n in names], average="weighted")


def test_demo_layout_is_the_organisers(mer2025):
    assert sorted(p.name for p in mer2025.iterdir()) == sorted([
        "video", "audio", "subtitle_chieng.csv", "track1_train_disdim.csv", "track_all_candidates.csv",
        HIDDEN_LABELS, "unlabeled_truth.csv"])
    subtitles = pd.read_csv(mer2025 / "subtitle_chieng.csv")
    assert list(subtitles.columns) == ["name", "chinese", "english"] and len(subtitles) == 40
    assert subtitles["name"].str.fullmatch(r"sample_\d{8}").all()
    assert subtitles["chinese"].str.contains(r"[\u4e00-\u9fff]").all()
    assert list(pd.read_csv(mer2025 / "track1_train_disdim.csv").columns) == ["name", "discrete"]
    assert list(pd.read_csv(mer2025 / "track_all_candidates.csv").columns) == ["name"]
    assert len(list((mer2025 / "video").glob("*.mp4"))) == len(list((mer2025 / "audio").glob("*.wav"))) == 40


def test_import_mer2025_marks_candidates_and_uses_the_release_wav(mer2025, tmp_path):
    out = tmp_path / "m" / "manifest.csv"
    summary = import_release("mer2025", mer2025, out, language="english")
    assert summary.rows == 40 and summary.splits == {"train": 24, "unlabeled": 16} and summary.candidates == 8
    manifest = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(manifest.columns) == ["sample_id", "video", "audio", "text", "label", "split", "candidate"]
    labels = pd.read_csv(mer2025 / "track1_train_disdim.csv", dtype=str)
    train = manifest[manifest["split"] == "train"].set_index("sample_id")
    assert train.loc[labels["name"], "label"].tolist() == labels["discrete"].tolist()
    assert (manifest.loc[manifest["split"] == "unlabeled", "label"] == "").all()
    candidates = set(pd.read_csv(mer2025 / "track_all_candidates.csv", dtype=str)["name"])
    assert set(manifest.loc[manifest["candidate"] == "1", "sample_id"]) == candidates
    assert manifest.set_index("sample_id").loc[sorted(candidates), "split"].eq("unlabeled").all()
    row = manifest.iloc[0]
    assert (out.parent / row["audio"]).resolve() == (mer2025 / "audio" / f"{row['sample_id']}.wav").resolve()
    english = pd.read_csv(mer2025 / "subtitle_chieng.csv", dtype=str).set_index("name")["english"]
    assert manifest.set_index("sample_id")["text"].equals(english.loc[manifest["sample_id"]].rename("text").rename_axis("sample_id"))


def test_import_mer2024_layout_with_a_candidate_list(tmp_path):
    root = make_release_corpus(tmp_path / "mer2024", "mer2024", n_train=12, n_unlabeled=6, n_test=6, seed=2, workers=1)
    assert (root / "video-labeled").is_dir() and (root / "video-unlabeled-with-test2noise").is_dir()
    summary = import_release("mer2024", root, tmp_path / "manifest.csv", candidates=root / "candidates.csv")
    assert summary.splits == {"train": 12, "unlabeled": 12} and summary.candidates == 6
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    assert (manifest["audio"] == "").all()  # MER2024 ships no wav: the video's track is used
    assert manifest["text"].str.contains(r"[\u4e00-\u9fff]").all()  # Chinese by default
    unlabeled = manifest[manifest["split"] == "unlabeled"]
    assert unlabeled["video"].str.startswith("mer2024/video-unlabeled-with-test2noise/").all()


def test_a_missing_list_or_column_is_one_line_and_a_missing_clip_is_quarantined(mer2025, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for folder in ("video", "audio"):
        os.symlink(mer2025 / folder, broken / folder, target_is_directory=True)
    pd.read_csv(mer2025 / "subtitle_chieng.csv").to_csv(broken / "subtitle_chieng.csv", index=False)
    code, _, err = run_mer(capsys, "corpus", "import", "mer2025", broken, "--out", tmp_path / "x.csv")
    assert code == 2 and err.strip() == f"error: {broken / 'track1_train_disdim.csv'}: missing (the labeled clips)"
    pd.read_csv(mer2025 / "track1_train_disdim.csv").rename(columns={"discrete": "label"}).to_csv(
        broken / "track1_train_disdim.csv", index=False)
    code, _, err = run_mer(capsys, "corpus", "import", "mer2025", broken, "--out", tmp_path / "x.csv")
    assert code == 2 and err.strip().startswith(f"error: {broken / 'track1_train_disdim.csv'}: no column 'discrete'")
    assert not (tmp_path / "x.csv").exists()  # nothing half-written left behind

    # a labeled clip whose video is gone keeps its row, and validation quarantines it
    names = pd.read_csv(mer2025 / "track1_train_disdim.csv", dtype=str)["name"]
    gone = names.iloc[0]
    copy = tmp_path / "copy"
    for folder in ("video", "audio"):
        (copy / folder).mkdir(parents=True)
        for f in (mer2025 / folder).iterdir():
            if f.stem != gone:
                os.link(f, copy / folder / f.name)
    for f in mer2025.glob("*.csv"):
        os.link(f, copy / f.name)
    code, out, err = run_mer(capsys, "corpus", "import", "mer2025", copy, "--out", tmp_path / "m.csv", "--no-media")
    assert code == 0 and "1 without a video file" in out and "1 quarantined" in out, err
    quarantine = pd.read_csv(tmp_path / "quarantine.csv", dtype=str)
    assert quarantine["sample_id"].tolist() == [gone] and "file not found" in quarantine["reason"].iloc[0]


def test_scorer_equals_the_organisers_on_a_fixture(tmp_path, capsys):
    rng = np.random.default_rng(0)
    names = [f"sample_{i:08d}" for i in range(200)]
    gt = rng.choice(LABELS, 200, p=[0.1, 0.1, 0.1, 0.3, 0.3, 0.1])
    pred = np.where(rng.random(200) < 0.6, gt, rng.choice(LABELS, 200))
    pd.DataFrame({"name": names, "discrete": gt}).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame({"name": names[::-1], "discrete": pred[::-1]}).to_csv(tmp_path / "submission.csv", index=False)
    code, out, err = run_mer(capsys, "evaluate", tmp_path / "submission.csv", "--truth", tmp_path / "labels.csv")
    assert code == 0, err
    ours = json.loads((tmp_path / "submission.metrics.json").read_text())["weighted_f1"]
    assert ours == pytest.approx(organisers_score(tmp_path / "labels.csv", tmp_path / "submission.csv"), abs=1e-12)
    assert f"weighted F1  {ours:.4f}" in out


@pytest.mark.timeout(1200)
def test_release_to_submission_through_mer_run(mer2025, tmp_path, capsys, ray_local):
    """mer corpus import -> mer run (validate ... selftrain, evaluate) -> mer export submission -> organisers' score."""
    from mer.config import job_from_dict
    from mer.runner import run_job

    manifest = tmp_path / "manifest.csv"
    code, _, err = run_mer(capsys, "corpus", "import", "mer2025", mer2025, "--out", manifest, "--language", "english")
    assert code == 0, err
    job = job_from_dict({
        "name": "rel", "manifest": str(manifest), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "truth": str(mer2025 / "unlabeled_truth.csv"),
        "encoders": {"audio": {"alias": "logmel"}, "text": {"alias": "minilm"}},
        "stages": ["validate", "extract", "train", "selftrain", "evaluate", "report"],
        "train": {"epochs": 3, "seeds": [0], "hidden": 16, "baseline": None},
        "selftrain": {"rounds": 1, "threshold": 0.5, "models": ["agt", "unimodal"], "min_new": 1},
    })
    results = run_job(job, echo=lambda _: None)
    assert results["validate"]["candidates"] == 8 and results["evaluate"]["weighted_f1"] is None  # no labeled test split
    out = tmp_path / "submission.csv"
    code, stdout, err = run_mer(capsys, "export", "submission", "--run", job.run_dir, "--out", out)
    assert code == 0 and "8 candidates" in stdout, err
    submission = pd.read_csv(out, dtype=str)
    assert list(submission.columns) == ["name", "discrete"] and submission["discrete"].isin(LABELS).all()
    assert submission["name"].tolist() == pd.read_csv(mer2025 / "track_all_candidates.csv", dtype=str)["name"].tolist()
    final = pd.read_csv(Path(job.run_dir) / "predictions_unlabeled.csv", dtype=str).set_index("sample_id")
    assert final.loc[submission["name"], "label"].tolist() == submission["discrete"].tolist()
    code, stdout, _ = run_mer(capsys, "evaluate", out, "--truth", mer2025 / HIDDEN_LABELS)
    ours = json.loads((tmp_path / "submission.metrics.json").read_text())["weighted_f1"]
    assert code == 0 and ours == pytest.approx(organisers_score(mer2025 / HIDDEN_LABELS, out), abs=1e-12)

    # a candidate that lost its clip: no submission, and the message names it
    (Path(job.run_dir) / "candidates.csv").write_text(
        (Path(job.run_dir) / "candidates.csv").read_text() + "sample_99999999,bad video: file not found\n")
    code, _, err = run_mer(capsys, "export", "submission", "--run", job.run_dir, "--out", tmp_path / "s2.csv")
    assert code == 2 and err.strip() == (f"error: {job.run_dir}: 1 of 9 candidates have no prediction: sample_99999999 "
                                         "(bad video: file not found); the organisers score every candidate, so no "
                                         "submission was written")
    assert not (tmp_path / "s2.csv").exists()
