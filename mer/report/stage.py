"""The ``evaluate`` and ``report`` stages of a job.

Both read the run folder through :mod:`mer.runfolder` only: the final
predictor's ``predictions_test.csv`` and the train stage's ``train.json``
(whose systems carry their CV and per-seed test scores). Nothing here trains
or predicts.
"""

from __future__ import annotations

import numpy as np

from mer.config import Job
from mer.corpus.labels import split_labels
from mer.errors import MerError
from mer.runfolder import METRICS, TRAIN, RunFolder


def evaluate(job: Job, echo=print) -> dict:
    """Score the final predictor's ``predictions_test.csv``; write ``metrics.json`` and ``confusion_test.png``.

    A corpus without a labeled test split (a challenge release: the candidates'
    labels are the organisers') gets ``metrics.json`` with the train split's
    cross-validated scores only, and says so.
    """
    from mer.report.metrics import evaluate_file

    run = RunFolder(job.run_dir)
    predictions = run.predictions("test")
    if not predictions.exists():
        raise MerError(f"{predictions}: no predictions (run the train stage first)")
    systems, published = (run.read_if_present(TRAIN) or {}).get("systems", {}), run.published(job.train.model)
    main = systems.get(published, {})
    extra = {"cv_train": main.get("cv"), "systems": systems, "focus_classes": list(job.selftrain.prior_classes)}
    truth, source = split_labels(job.manifest, job.store, job.streams(), "test")
    cv = main.get("cv") or {}
    if truth is None:
        run.write(METRICS, {**extra, "weighted_f1": None, "note": "no labeled test split: cross-validated scores only"})
        echo(f"   no labeled test split; {published} cross-validated on train: "
             + ("-" if cv.get("mean") is None else f"{cv['mean']:.4f} ({cv['scheme']})"))
        return {"weighted_f1": None, "cv_weighted_f1": cv.get("mean"), "files": [str(run / METRICS)]}
    truth_csv = run.truth("test")
    truth.to_csv(truth_csv, index=False)
    metrics = evaluate_file(predictions, truth_csv, run.path, labels=job.labels, extra=extra, run_owned=True)
    line = f"   test weighted F1 {metrics['weighted_f1']:.4f}, accuracy {metrics['accuracy']:.4f}"
    for name, system in systems.items():
        system_cv, test = system["cv"], system.get("test") or {}
        line += (f"; {name} per seed {np.mean(test['waf']):.4f} on test" if test.get("waf") else f"; {name}")
        line += f", {system_cv['mean']:.4f} cross-validated on train ({system_cv['scheme']})" if system_cv["mean"] is not None else ""
    echo(f"{line} (n={metrics['n']}, truth from {source})")
    return {"weighted_f1": metrics["weighted_f1"], "accuracy": metrics["accuracy"], "files": metrics["files"],
            "cv_weighted_f1": cv.get("mean")}


def report(job: Job, echo=print) -> dict:
    """``report.md``/``report.json``/plots of ``run_dir`` (see :mod:`mer.report.report`)."""
    from mer.report.report import build_report

    return {"files": build_report(job.run_dir)["files"]}
