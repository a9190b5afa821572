"""``mer tune`` as a user runs it: a real CLI process on its own local Ray, killed and resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mer.config import job_from_dict
from synthetic import write_synthetic_features

MER = [str(Path(sys.executable).parent / "mer")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    data = {
        "name": "tt", "manifest": "none.csv", "store": "store", "run_dir": "run",
        "encoders": {"audio": {"alias": "logmel", "seq_len": 0}, "video": {"alias": "frames", "seq_len": 0}},
        "train": {"epochs": 8, "hidden": 16, "model": "concat"},
        "tune": {"num_samples": 6, "folds": 3, "seed": 3, "space": {
            "train.model": {"choice": ["linear", "concat"]},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "train.linear_c": {"loguniform": [1e-3, 1.0]}}},
    }
    (root / "tune.yaml").write_text(yaml.safe_dump(data))
    job = job_from_dict({**data, "store": str(root / "store")})
    write_synthetic_features(job, {"train": 120, "test": 30, "unlabeled": 20}, seed=1, noise=2.0)
    return root


def mer_tune(root: Path, run_dir: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*MER, "tune", "tune.yaml", f"run_dir={run_dir}"], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.timeout(1500)
@pytest.mark.integration
def test_tune_writes_results_and_a_killed_search_resumes_to_the_same_best(project):
    clean = finish(mer_tune(project, "run_clean"))
    assert "trial 6/6" in clean and "next: mer run run_clean/best.yaml" in clean
    table = pd.read_csv(project / "run_clean" / "tune_results.csv")
    assert len(table) == 6 and (table["status"] == "complete").all() and (table["folds_done"] == 3).all()
    assert table["cv_weighted_f1"].is_monotonic_decreasing and table["rank"].tolist() == list(range(1, 7))
    assert (project / "run_clean" / "tune.png").stat().st_size > 0
    best = yaml.safe_load((project / "run_clean" / "best.yaml").read_text())
    assert best["train"]["model"] == table.loc[0, "train.model"]
    assert best["train"]["lr"] == pytest.approx(table.loc[0, "train.lr"], rel=1e-5)
    assert best["tune"]["space"] == {} and best["run_dir"].endswith("run_clean/best")

    killed = mer_tune(project, "run_killed")
    seen = ""
    deadline = time.monotonic() + 400
    while "trial 2/6" not in seen and time.monotonic() < deadline:
        seen += killed.stdout.readline()
    assert "trial 2/6" in seen, seen[-3000:]
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and the Ray it started
    killed.wait()
    resumed = finish(mer_tune(project, "run_killed"))
    assert "resuming the search" in resumed
    again = pd.read_csv(project / "run_killed" / "tune_results.csv")
    cols = ["cv_weighted_f1", "train.model", "train.lr", "train.linear_c"]
    pd.testing.assert_frame_equal(again[cols], table[cols])

    bad = subprocess.run([*MER, "tune", "tune.yaml", "tune.space={train.nope: {choice: [1]}}"], cwd=project,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "tune.space: 'train.nope'" in bad.stderr


def test_best_job_file_trains_the_winner_and_does_not_tune_again(tmp_path):
    """``stages=[tune]`` (how ``mer submit`` runs a search) writes a best.yaml that trains instead."""
    from mer.config import load_job
    from mer.runfolder import RunFolder
    from mer.tune.results import rank_trials, write_results
    from mer.tune.search import write_best

    job = job_from_dict({"name": "t", "manifest": "m.csv", "stages": ["tune"],
                         "tune": {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}})
    rows = [{"trial": i, "params": {"train.lr": lr}, "cv_weighted_f1": f1, "cv_std": 0.0, "folds_done": 5,
             "status": status} for i, (lr, f1, status) in enumerate([(1e-3, 0.8, "complete"), (2e-3, 0.9, "stopped"),
                                                                     (3e-3, 0.7, "complete")])]
    table = rank_trials(rows)
    assert table["trial"].tolist() == [0, 2, 1]  # finished trials first, a stopped one's partial score never wins
    values, row = write_results(table, RunFolder(tmp_path))
    write_best(job, values, row, RunFolder(tmp_path))
    best = load_job(tmp_path / "best.yaml")
    assert values == {"train.lr": 1e-3} and best.train.lr == 1e-3
    assert best.stages == ["train", "evaluate", "report"] and best.tune.space == {}
