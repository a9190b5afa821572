"""Ray workers never read a path that only makes sense on the driver.

On a cluster a worker runs on another machine, in another directory: a job's
relative paths (``manifest=corpus/manifest.csv store=store``) and a manifest's
paths relative to its own folder mean nothing there. mer resolves them on the
driver (``mer.runner.absolute``; ``mer.corpus.manifest`` makes media paths
absolute) and ships only absolute paths and store URIs.

The test makes that checkable on one machine. The driver runs in a subprocess
(its own ``ray.init``, isolated from the other tests' Ray) from a directory
where the job's relative paths resolve, while every Ray worker runs in another
one: ``runtime_env={"working_dir": ...}`` makes Ray start each worker (decode
tasks, encoder actors, Ray Train workers) inside a copy of a folder that holds
a single marker file. A worker that opened ``corpus/media/x.mp4`` or
``store`` relative to its own directory would find nothing (the sample is
quarantined, training finds no table) or would write into that copy; the
test asserts every sample was extracted, training read the store, and the
workers' directory still holds only the marker.

Training reads through the streaming path (``execution.memory_budget_gb=0``),
where each Ray Train worker opens the store by its URI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from mer.corpus.demo import make_demo_corpus

JOB = """\
name: worker_paths
manifest: corpus/manifest.csv
store: store
run_dir: run
labels: [neutral, angry, happy, sad, worried, surprise]
encoders:
  audio: {alias: logmel}
stages: [validate, extract, train]
train: {model: linear, seeds: [0], baseline: null}
execution: {memory_budget_gb: 0.0}
"""

# Run as ``python -c DRIVER <job dir> <workers' dir>``; prints one JSON line.
DRIVER = textwrap.dedent("""\
    import json, os, sys
    import ray
    from mer.config import load_job
    from mer.runner import run_job

    job_dir, workers_dir = sys.argv[1:3]
    os.chdir(job_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"working_dir": workers_dir})
    cwd = ray.get(ray.remote(lambda: os.getcwd()).remote())
    before = sorted(os.listdir(cwd))
    results = run_job(load_job("job.yaml"), echo=lambda line: None)
    print("RESULT " + json.dumps({"worker_cwd": cwd, "before": before, "after": sorted(os.listdir(cwd)),
                                  "extract": results["extract"], "train": results["train"]}, default=str))
    ray.shutdown()
""")


@pytest.mark.timeout(240)
def test_workers_read_only_absolute_paths_and_store_uris(tmp_path):
    job_dir, workers_dir = tmp_path / "job", tmp_path / "workers"
    workers_dir.mkdir()
    (workers_dir / "MARKER").write_text("the Ray workers' working dir\n")
    make_demo_corpus(job_dir / "corpus", n_train=12, n_unlabeled=4, n_test=6, seed=5, workers=1)
    (job_dir / "job.yaml").write_text(JOB)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_MODE"))}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(job_dir), str(workers_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])

    # The setup holds: workers run elsewhere, in a copy of workers_dir that the job's paths do not resolve in.
    assert Path(result["worker_cwd"]).resolve() != job_dir.resolve()
    assert result["before"] == ["MARKER"]

    clean = pd.read_csv(job_dir / "run" / "manifest_clean.csv", dtype={"sample_id": str})
    assert len(clean) == 22
    summary = result["extract"]["audio"]
    assert (summary["written"], summary["failed"]) == (int(clean["has_audio"].sum()), 0), summary
    assert pd.read_csv(job_dir / "run" / "quarantine.csv").empty

    assert result["train"]["read_path"] == "streaming"
    predictions = pd.read_csv(job_dir / "run" / "predictions_test.csv", dtype={"sample_id": str})
    assert sorted(predictions["sample_id"]) == sorted(clean.loc[clean["split"] == "test", "sample_id"])

    # Nothing was written relative to a worker's directory (a relative store or run dir would land there).
    assert result["after"] == ["MARKER"]
