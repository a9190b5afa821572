"""Self-training rounds: train K models x seeds, pseudo-label the unlabeled split, retrain.

Round ``r`` (0 .. ``selftrain.rounds``) trains every model in ``selftrain.models``
for every seed in ``train.seeds`` on the labeled train split plus the
pseudo-labels accepted in rounds ``< r`` (round 0 is the supervised system).
Rounds before the last then predict the still-unlabeled samples, vote
(``mer.selftrain.voting``) and write the accepted labels to the store's
``pseudo_labels`` table with ``round = r``. A label, once accepted, stays: later
rounds vote only on samples that have none yet (our choice; the paper does not
say). The loop stops after the last round, or right after a round whose vote
adds fewer than ``selftrain.min_new`` labels: that round's models are final.

Every round also predicts the test split with the same vote (threshold
``selftrain.test_threshold``, by default ``selftrain.threshold``; a sample with
no confident vote takes the arg-max of the mean probability) and records test
weighted F1, for the seed ensemble and per seed, so the report can plot WAF per
round.

Work is cached by content (``mer.train.cache``), which makes the stage
resumable, lets round 0 reuse the train stage's fits and lets the ablation
runner share fits between variants; a finished round leaves
``round_<r>/done.json`` and ``round_<r>/pseudo_labels.csv``, and a rerun reuses
both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mer.config import Job
from mer.errors import MerError
from mer.selftrain.voting import average_seeds, prob_columns, vote
from mer.train import cache
from mer.train.cache import digest, fingerprint, fit_many, fits_dir_of, predict_cached

def run_id(job: Job) -> str:
    """Stable id of a self-training run: the job name plus a hash of what shapes its labels."""
    key = {**fingerprint(job), "selftrain": dataclasses.asdict(job.selftrain), "seeds": job.train.seeds,
           "truth": str(job.truth)}  # the rounds' records score pseudo-labels against it
    return f"{job.name}-{digest(key)[:8]}"


def split_truth(job: Job, split: str = "test") -> pd.DataFrame | None:
    """``sample_id,label`` of a labeled split from the manifest (None when it has no labels)."""
    from mer.corpus.manifest import read_manifest

    df = read_manifest(job.manifest)
    df = df[(df["split"] == split) & df["label"].notna() & (df["label"].astype(str) != "")]
    return None if df.empty else df[["sample_id", "label"]].astype(str).reset_index(drop=True)


def read_truth(path: str | None) -> pd.DataFrame | None:
    """Hidden labels of the unlabeled split (``job.truth``), for reporting only."""
    if not path:
        return None
    if not Path(path).exists():
        raise MerError(f"truth: {path}: no such file")
    df = pd.read_csv(path, dtype=str)
    if not {"sample_id", "label"} <= set(df.columns):
        raise MerError(f"truth: {path}: needs columns sample_id,label")
    return df[["sample_id", "label"]]


def vote_kwargs(job: Job, weights: dict[str, float] | None = None) -> dict:
    """The job's voting settings as keyword arguments of ``voting.vote``.

    With ``weights`` (``selftrain.voters: cv``) a prior vote whose audio model
    has weight 0 becomes a majority vote.
    """
    st = job.selftrain
    voting = st.voting
    if voting == "prior" and weights is not None and weights.get(st.audio_model, 0.0) <= 0:
        voting = "majority"
    return {
        "voting": voting,
        "prior_classes": st.prior_classes,
        "audio_model": st.audio_model if voting == "prior" else None,
        "prior_mode": st.prior_mode,
        "weights": weights,
    }


def voter_weights(job: Job, cv: dict[str, float]) -> dict[str, float] | None:
    """Vote weights from the models' CV scores (``selftrain.voters: cv``), else None (equal votes).

    A model scoring more than ``selftrain.cv_margin`` below the best gets 0
    (no vote); the others vote with their score.
    """
    if job.selftrain.voters != "cv" or not cv:
        return None
    best = max(cv.values())
    return {m: (score if score >= best - job.selftrain.cv_margin else 0.0) for m, score in cv.items()}


def models_cv(ckpts: dict[tuple[str, int], Path], seeds: list[int]) -> dict[str, float]:
    """Model -> mean over seeds of its fits' cross-validated weighted F1 on the labeled train split."""
    from mer.train.checkpoint import read_config

    scores: dict[str, list[float]] = {}
    for (model, seed), ckpt in ckpts.items():
        score = read_config(ckpt).get("cv", {}).get("weighted_f1")
        if seed in seeds and score is not None:
            scores.setdefault(model, []).append(score)
    return {m: float(np.mean(v)) for m, v in scores.items()}


def vote_test(job: Job, tables: dict[str, pd.DataFrame], weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Final-style prediction on a split: the vote, soft arg-max where it gives no label.

    Returns ``sample_id,label,p_<label>...`` (probabilities = mean over models),
    the predictions CSV format.
    """
    cols = prob_columns(job.labels)
    st = job.selftrain
    tau = st.threshold if st.test_threshold is None else st.test_threshold
    voted = vote(tables, job.labels, tau=tau, keep_unlabeled=True, **vote_kwargs(job, weights))
    voting_tables = [t for m, t in tables.items() if weights is None or weights.get(m, 0.0) > 0]
    mean = average_seeds(voting_tables, job.labels)
    out = mean.merge(voted[["sample_id", "label"]].rename(columns={"label": "voted"}), on="sample_id", how="left")
    out["label"] = out["voted"].where(out["voted"].notna(), out["label"])
    return out[["sample_id", "label", *cols]]


def score(pred: pd.DataFrame, truth: pd.DataFrame | None, labels: list[str]) -> dict | None:
    if truth is None:
        return None
    from mer.report.metrics import evaluate

    return evaluate(pred, truth, labels)


def seed_cell(metrics: list[dict | None]) -> dict:
    """Per-seed metric dicts -> lists the report shows as mean +- std: ``waf`` and ``f1_<class>`` per class."""
    ok = [m for m in metrics if m]
    cell = {"waf": [m["weighted_f1"] for m in ok]}
    for c in (ok[0]["per_class"] if ok else {}):
        cell[f"f1_{c}"] = [m["per_class"][c]["f1"] for m in ok]
    return cell


def run_rounds(
    job: Job,
    echo: Callable[[str], None] = print,
    on_round: Callable[[dict], None] | None = None,
    fits_dir: Path | None = None,
) -> dict:
    """Run (or resume) the self-training rounds of ``job``; write selftrain.json.

    Args:
        job: the job; reads ``selftrain``, ``train.seeds``, ``store``, ``truth``.
        echo: progress printer.
        on_round: called with each round's record (the stage publishes metrics).
        fits_dir: fit cache (default ``run_dir/checkpoints``, the train
            stage's, so round 0 reuses its fits); the ablation runner shares
            one between its variants.

    Returns:
        The dict written to ``run_dir/selftrain.json``.
    """
    from mer.store import open_store

    st = job.selftrain
    if st.voting == "prior" and st.audio_model not in st.models:
        raise MerError(f"selftrain.audio_model: '{st.audio_model}' is not in selftrain.models {st.models}")
    if st.voting == "prior" and st.audio_model == "unimodal" and job.train.unimodal_role != "audio":
        raise MerError(f"selftrain: prior voting trusts the audio model, but train.unimodal_role is '{job.train.unimodal_role}'")
    rid = run_id(job)
    root = Path(job.run_dir) / "selftrain"
    fits_dir, run_root = Path(fits_dir or fits_dir_of(job)), root / rid
    store = open_store(job.store)
    test_truth = split_truth(job, "test")
    hidden = read_truth(job.truth)
    seeds = list(job.train.seeds)

    accepted = pd.DataFrame(columns=["sample_id", "label", "confidence", "votes", "round"])
    records, final_pred, stopped = [], None, "rounds"
    trained_on = accepted  # the pseudo-labels of the last round run, which its models trained on
    for r in range(st.rounds + 1):
        rdir = run_root / f"round_{r}"
        done = rdir / "done.json"
        labels_csv = rdir / "pseudo_labels.csv"
        if done.exists():
            record = json.loads(done.read_text())
            new = pd.read_csv(labels_csv, dtype={"sample_id": str, "label": str, "votes": str}, keep_default_na=False)
            _ensure_stored(store, rid, r, new)
            echo(f"   round {r}: reused ({record['added']} pseudo-labels)")
        else:
            rdir.mkdir(parents=True, exist_ok=True)
            record, new = _one_round(job, r, rdir, accepted, fits_dir, test_truth, hidden, echo)
            new.to_csv(labels_csv, index=False)
            _ensure_stored(store, rid, r, new)
            done.write_text(json.dumps(record, indent=2))
        records.append(record)
        if on_round:
            on_round({**record, "run_id": rid})
        trained_on = accepted
        if len(new):
            accepted = pd.concat([accepted, new.assign(round=r)], ignore_index=True)
        final_pred = rdir / "predictions_test.csv"
        if r < st.rounds and record["added"] < st.min_new:
            stopped = f"round {r} added {record['added']} < min_new {st.min_new}"
            break

    summary = _summarise(job, rid, records, stopped, seeds)
    summary["final_checkpoints"] = _final_checkpoints(job, trained_on, fits_dir)
    _write_outputs(job, summary, final_pred, test_truth)
    store.log_run(rid, job.to_yaml(), {k: summary[k] for k in ("rounds", "stopped", "comparison")})
    return summary


def _one_round(job, r, rdir, accepted, fits_dir, test_truth, hidden, echo) -> tuple[dict, pd.DataFrame]:
    """Fit every model x seed on train + ``accepted``; score test; vote on the rest of unlabeled."""
    st = job.selftrain
    extra = None if accepted.empty else accepted[["sample_id", "label"]]
    echo(f"   round {r}: fit {', '.join(st.models)} x seeds {job.train.seeds} "
         f"on train + {0 if extra is None else len(extra)} pseudo-labels")
    ckpts = fit_many(job, [(m, s) for m in st.models for s in job.train.seeds], extra, fits_dir)

    def tables(split, seeds):
        return {m: average_seeds([predict_cached(ckpts[(m, s)], job.store, split) for s in seeds], job.labels) for m in st.models}

    cv = models_cv(ckpts, job.train.seeds)
    weights = voter_weights(job, cv)
    test_tables = tables("test", job.train.seeds)
    test_pred = vote_test(job, test_tables, weights)
    test_pred.to_csv(rdir / "predictions_test.csv", index=False)
    metrics = score(test_pred, test_truth, job.labels)
    per_seed = [score(vote_test(job, tables("test", [s]), weights), test_truth, job.labels) for s in job.train.seeds]
    # The same round's models re-voted the other way, so the report shows the paper's vote and the CV vote side by side.
    other = dataclasses.replace(job, selftrain=dataclasses.replace(
        job.selftrain, voters="all" if job.selftrain.voters == "cv" else "cv"))
    other_metrics = score(vote_test(other, test_tables, voter_weights(other, cv)), test_truth, job.labels)
    per_model = {
        m: seed_cell([score(predict_cached(ckpts[(m, s)], job.store, "test"), test_truth, job.labels) for s in job.train.seeds])
        for m in st.models
    }
    record = {
        "round": r,
        "trained_on": 0 if extra is None else len(extra),
        "test_weighted_f1": None if metrics is None else metrics["weighted_f1"],
        "test_metrics": metrics,
        "test_weighted_f1_per_seed": [m["weighted_f1"] for m in per_seed if m],
        "vote_per_seed": seed_cell(per_seed),
        "models": per_model,
        "models_cv": cv,
        "vote_weights": weights,
        "test_weighted_f1_other_voters": None if other_metrics is None else other_metrics["weighted_f1"],
        "added": 0,
        "added_per_class": dict.fromkeys(job.labels, 0),
        "pseudo_accuracy": None,
    }
    new = pd.DataFrame(columns=["sample_id", "label", "confidence", "votes"])
    if r < st.rounds:
        unl = tables("unlabeled", job.train.seeds)
        taken = set(accepted["sample_id"].astype(str))
        unl = {m: t[~t["sample_id"].astype(str).isin(taken)] for m, t in unl.items()}
        new = vote(unl, job.labels, tau=st.threshold, **vote_kwargs(job, weights))
        counts = new["label"].value_counts()
        record["added"] = len(new)
        record["added_per_class"] = {c: int(counts.get(c, 0)) for c in job.labels}
        if hidden is not None and len(new):
            joined = new.merge(hidden, on="sample_id", suffixes=("", "_true"))
            record["pseudo_accuracy"] = float((joined["label"] == joined["label_true"]).mean()) if len(joined) else None
            for c in st.prior_classes:
                sub = joined[joined["label"] == c]
                record[f"pseudo_precision_{c}"] = float((sub["label_true"] == c).mean()) if len(sub) else None
    echo(f"   round {r}: test WAF {record['test_weighted_f1']}, added {record['added']} pseudo-labels")
    return record, new


def _final_checkpoints(job: Job, trained_on: pd.DataFrame, fits_dir: Path) -> dict[str, list[str]]:
    """The final round's checkpoint folders, model -> one per seed (``mer predict --run`` loads them).

    The fit cache names every fit (:func:`mer.train.cache.fit_path`), so this
    only computes the folders the last round trained or reused; it trains nothing.
    """
    extra = None if trained_on.empty else trained_on[["sample_id", "label"]]
    plan = cache.plan_read(job)
    return {m: [str(cache.fit_path(job, m, s, extra, fits_dir, plan)) for s in job.train.seeds]
            for m in job.selftrain.models}


def _ensure_stored(store, rid: str, r: int, labels: pd.DataFrame) -> None:
    """Write a round's labels to ``pseudo_labels`` once (a rerun finds them there)."""
    if labels.empty or len(store.read_pseudo_labels(rid, round=r)):
        return
    store.write_pseudo_labels(labels[["sample_id", "label", "confidence", "votes"]].assign(run_id=rid, round=r))


def _summarise(job: Job, rid: str, records: list[dict], stopped: str, seeds: list[int]) -> dict:
    base_model = job.train.model if job.train.model in job.selftrain.models else job.selftrain.models[0]
    first, last = records[0], records[-1]
    comparison = {
        f"supervised {base_model}": first["models"].get(base_model, {}),
        "supervised vote (round 0)": first["vote_per_seed"],
        f"self-trained {base_model} (round {last['round']})": last["models"].get(base_model, {}),
        f"self-training + {job.selftrain.voting} vote (round {last['round']})": last["vote_per_seed"],
    }
    return {
        "name": job.name,
        "run_id": rid,
        "labels": job.labels,
        "seeds": seeds,
        "config": dataclasses.asdict(job.selftrain),
        "stopped": stopped,
        "rounds": [{k: v for k, v in rec.items() if k != "test_metrics"} for rec in records],
        "supervised": first["test_metrics"],
        "final": last["test_metrics"],
        "comparison": comparison,
    }


def _write_outputs(job: Job, summary: dict, final_pred: Path, test_truth) -> None:
    """predictions_test.csv becomes the self-trained vote; the supervised one is kept aside."""
    run_dir = Path(job.run_dir)
    current, kept = run_dir / "predictions_test.csv", run_dir / "predictions_test_supervised.csv"
    if current.exists() and not kept.exists():
        current.rename(kept)
    if kept.exists():
        summary["train_stage"] = score(pd.read_csv(kept, dtype={"sample_id": str}), test_truth, job.labels)
    current.write_bytes(final_pred.read_bytes())
    (run_dir / "selftrain.json").write_text(json.dumps(summary, indent=2, default=float))


def per_class_f1(summary: dict) -> dict[str, float]:
    """Per-class F1 of the final vote (for quick checks and the CLI)."""
    final = summary.get("final") or {}
    return {c: float(np.round(m["f1"], 4)) for c, m in final.get("per_class", {}).items()}
