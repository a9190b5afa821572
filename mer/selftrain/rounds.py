"""Self-training rounds: train K models x seeds, pseudo-label the unlabeled split, retrain.

Round ``r`` (0 .. ``selftrain.rounds``) trains every model in ``selftrain.models``
for every seed in ``train.seeds`` on the labeled train split plus the
pseudo-labels accepted in rounds ``< r`` (round 0 is the supervised system).
Rounds before the last then predict the still-unlabeled samples, vote
(:mod:`mer.voting`) and write the accepted labels to the store's
``pseudo_labels`` table with ``round = r``. A label, once accepted, stays: later
rounds vote only on samples that have none yet (our choice; the paper does not
say). The loop stops after the last round, or right after a round whose vote
adds fewer than ``selftrain.min_new`` labels: that round's models are final.

Every round predicts the test split with the same vote
(:func:`mer.voting.final_vote`) and records test weighted F1 where the test
split has labels, for the seed ensemble and per seed, so the report can plot WAF
per round. The final round's vote is published as the run's predictor
(``predictor.json``, ``predictions_test.csv``, ``predictions_unlabeled.csv``:
the challenge candidates are unlabeled clips).

Stored splits are predicted shard by shard, on a Ray Data actor pool when a
split has several shards (:mod:`mer.train.parallel`); the driver holds per
sample only ids, the round's probabilities and the accepted labels, never
features. Work is cached by content (:mod:`mer.train.cache`), which makes the
stage resumable, lets round 0 reuse the train stage's fits and lets the
ablation runner share fits between variants; a finished round leaves
``round_<r>/done.json`` and ``round_<r>/pseudo_labels.csv``, and a rerun reuses both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mer.config import SelftrainConfig
from mer.metrics import score, seed_cell
from mer.runfolder import SELFTRAIN, VOTE, FinalPredictor, RunFolder, read_predictions, write_predictions
from mer.train.cache import fit_many, predict_cached
from mer.train.checkpoint import read_config
from mer.train.key import digest, fingerprint, labels_digest
from mer.train.settings import FitSettings
from mer.voting import average_seeds, final_vote, models_cv, rule_kwargs, vote, voter_weights

PSEUDO_COLUMNS = ["sample_id", "label", "confidence", "votes"]


@dataclass
class Truth:
    """Labels the rounds score against, never train on: the test split's, and the unlabeled split's hidden ones."""

    test: pd.DataFrame | None = None
    hidden: pd.DataFrame | None = None
    hidden_source: str = ""


def run_id(fit: FitSettings, st: SelftrainConfig, truth_source: str = "") -> str:
    """Stable id of a self-training run: the job name plus a hash of what shapes its labels."""
    key = {**fingerprint(fit), "selftrain": dataclasses.asdict(st), "seeds": fit.train.seeds,
           "truth": truth_source or "None"}  # the rounds' records score pseudo-labels against it
    return f"{fit.name}-{digest(key)[:8]}"


def run_rounds(
    fit: FitSettings,
    st: SelftrainConfig,
    run: RunFolder,
    truth: Truth,
    echo: Callable[[str], None] = print,
    on_round: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume) the self-training rounds; write ``selftrain.json`` and publish the final vote.

    Args:
        fit: what the fits read and how they run (its ``fits_dir`` is shared
            with the train stage, so round 0 reuses its fits).
        st: the ``selftrain`` settings.
        run: the run folder the rounds write into.
        truth: test labels and hidden unlabeled labels, for the records only.
        echo: progress printer.
        on_round: called with each round's record (the stage publishes metrics).

    Returns:
        The dict written to ``selftrain.json``.
    """
    from mer.store import open_store

    rid = run_id(fit, st, truth.hidden_source)
    store = open_store(fit.store)
    seeds = list(fit.train.seeds)
    accepted = pd.DataFrame(columns=[*PSEUDO_COLUMNS, "round"])
    records, stopped = [], "rounds"
    trained_on = accepted  # the pseudo-labels of the last round run, which its models trained on
    for r in range(st.rounds + 1):
        rdir = run.selftrain_round(rid, r)
        done = rdir / "done.json"
        if done.exists():
            record = json.loads(done.read_text())
            new = pd.read_csv(rdir / "pseudo_labels.csv", dtype={"sample_id": str, "label": str, "votes": str},
                              keep_default_na=False)
            echo(f"   round {r}: reused ({record['added']} pseudo-labels)")
        else:
            record, new = _one_round(fit, st, r, rdir, accepted, truth, echo)
            new.to_csv(rdir / "pseudo_labels.csv", index=False)
            done.write_text(json.dumps(record, indent=2))
        _ensure_stored(store, rid, r, new)
        records.append(record)
        if on_round:
            on_round({**record, "run_id": rid})
        trained_on = accepted
        if len(new):
            accepted = pd.concat([accepted, new.assign(round=r)], ignore_index=True)
        if r < st.rounds and record["added"] < st.min_new:
            stopped = f"round {r} added {record['added']} < min_new {st.min_new}"
            break

    summary = _summarise(fit, st, rid, records, stopped, seeds)
    final = _publish(fit, st, run, trained_on, records[-1].get("vote_weights"))
    summary["final_checkpoints"] = {m: [run.relative(p) for p in paths] for m, paths in final.checkpoints.items()}
    supervised = run.predictions("test", run.published(fit.train.model))
    if truth.test is not None and supervised.exists():  # the train stage's published seed ensemble, for the report
        summary["train_stage"] = score(read_predictions(supervised), truth.test, fit.labels)
    run.write(SELFTRAIN, summary)
    store.log_run(rid, fit.config_yaml, {k: summary[k] for k in ("rounds", "stopped", "comparison")})
    return summary


def _round_checkpoints(fit: FitSettings, st: SelftrainConfig, extra: pd.DataFrame | None) -> dict[tuple[str, int], Path]:
    return fit_many(fit, [(m, s) for m in st.models for s in fit.train.seeds], extra)


def _tables(fit: FitSettings, st: SelftrainConfig, ckpts: dict, split: str, seeds: list[int]) -> dict[str, pd.DataFrame]:
    """Model -> its seeds' mean probabilities on ``split`` (every checkpoint predicted in one pass)."""
    keys = [(m, s) for m in st.models for s in seeds]
    frames = dict(zip(keys, predict_cached([ckpts[k] for k in keys], fit.store, split, fit.execution)))
    return {m: average_seeds([frames[(m, s)] for s in seeds], fit.labels) for m in st.models}


def _one_round(fit: FitSettings, st: SelftrainConfig, r: int, rdir: Path, accepted: pd.DataFrame, truth: Truth,
               echo) -> tuple[dict, pd.DataFrame]:
    """Fit every model x seed on train + ``accepted``; score test; vote on the rest of unlabeled."""
    seeds = list(fit.train.seeds)
    extra = None if accepted.empty else accepted[["sample_id", "label"]]
    echo(f"   round {r}: fit {', '.join(st.models)} x seeds {seeds} on train + {0 if extra is None else len(extra)} "
         "pseudo-labels")
    ckpts = _round_checkpoints(fit, st, extra)
    cv = models_cv({k: read_config(p).get("cv", {}).get("weighted_f1") for k, p in ckpts.items()}, seeds)
    weights = voter_weights(st, cv)
    per_checkpoint = {k: f for k, f in zip(ckpts, predict_cached(list(ckpts.values()), fit.store, "test", fit.execution))}
    test_tables = {m: average_seeds([per_checkpoint[(m, s)] for s in seeds], fit.labels) for m in st.models}
    test_pred = final_vote(test_tables, fit.labels, st, weights)
    write_predictions(test_pred, rdir / "predictions_test.csv")
    metrics = score(test_pred, truth.test, fit.labels)
    per_seed = [score(final_vote({m: per_checkpoint[(m, s)] for m in st.models}, fit.labels, st, weights),
                      truth.test, fit.labels) for s in seeds]
    # The same round's models re-voted the other way, so the report shows the paper's vote and the CV vote side by side.
    other = dataclasses.replace(st, voters="all" if st.voters == "cv" else "cv")
    other_metrics = score(final_vote(test_tables, fit.labels, other, voter_weights(other, cv)), truth.test, fit.labels)
    record = {
        "round": r,
        "trained_on": 0 if extra is None else len(extra),
        "trained_on_digest": labels_digest(extra),
        "test_weighted_f1": None if metrics is None else metrics["weighted_f1"],
        "test_metrics": metrics,
        "test_weighted_f1_per_seed": [m["weighted_f1"] for m in per_seed if m],
        "vote_per_seed": seed_cell(per_seed),
        "models": {m: seed_cell([score(per_checkpoint[(m, s)], truth.test, fit.labels) for s in seeds]) for m in st.models},
        "models_cv": cv,
        "vote_weights": weights,
        "test_weighted_f1_other_voters": None if other_metrics is None else other_metrics["weighted_f1"],
        "added": 0,
        "added_per_class": dict.fromkeys(fit.labels, 0),
        "pseudo_accuracy": None,
    }
    new = pd.DataFrame(columns=PSEUDO_COLUMNS)
    if r < st.rounds:
        unl = _tables(fit, st, ckpts, "unlabeled", seeds)
        taken = pd.Index(accepted["sample_id"].astype(str))
        unl = {m: t[taken.get_indexer(t["sample_id"]) < 0] for m, t in unl.items()}
        new = vote(unl, fit.labels, tau=st.threshold, **rule_kwargs(st, weights))
        counts = new["label"].value_counts()
        record["added"] = len(new)
        record["added_per_class"] = {c: int(counts.get(c, 0)) for c in fit.labels}
        if truth.hidden is not None and len(new):
            joined = new.merge(truth.hidden, on="sample_id", suffixes=("", "_true"))
            record["pseudo_accuracy"] = float((joined["label"] == joined["label_true"]).mean()) if len(joined) else None
            for c in st.prior_classes:
                sub = joined[joined["label"] == c]
                record[f"pseudo_precision_{c}"] = float((sub["label_true"] == c).mean()) if len(sub) else None
    shown = "-" if record["test_weighted_f1"] is None else f"{record['test_weighted_f1']:.4f}"
    echo(f"   round {r}: test WAF {shown}, added {record['added']} pseudo-labels")
    return record, new


def _publish(fit: FitSettings, st: SelftrainConfig, run: RunFolder, trained_on: pd.DataFrame,
             weights: dict | None) -> FinalPredictor:
    """Publish the final round's vote as the run's predictor (its fits are cached: nothing trains here)."""
    seeds = list(fit.train.seeds)
    extra = None if trained_on.empty else trained_on[["sample_id", "label"]]
    ckpts = _round_checkpoints(fit, st, extra)
    predictions = {split: final_vote(_tables(fit, st, ckpts, split, seeds), fit.labels, st, weights)
                   for split in ("test", "unlabeled")}
    final = FinalPredictor(VOTE, list(fit.labels), {m: [ckpts[(m, s)] for s in seeds] for m in st.models},
                           seeds=seeds, selftrain=dataclasses.asdict(st), weights=weights)
    run.publish_final(final, predictions)
    return final


def _ensure_stored(store, rid: str, r: int, labels: pd.DataFrame) -> None:
    """Write a round's labels to ``pseudo_labels`` once (a rerun finds them there)."""
    if labels.empty or len(store.read_pseudo_labels(rid, round=r)):
        return
    store.write_pseudo_labels(labels[PSEUDO_COLUMNS].assign(run_id=rid, round=r))


def _summarise(fit: FitSettings, st: SelftrainConfig, rid: str, records: list[dict], stopped: str,
               seeds: list[int]) -> dict:
    base_model = fit.train.model if fit.train.model in st.models else st.models[0]
    first, last = records[0], records[-1]
    comparison = {
        f"supervised {base_model}": first["models"].get(base_model, {}),
        "supervised vote (round 0)": first["vote_per_seed"],
        f"self-trained {base_model} (round {last['round']})": last["models"].get(base_model, {}),
        f"self-training + {st.voting} vote (round {last['round']})": last["vote_per_seed"],
    }
    return {
        "name": fit.name,
        "run_id": rid,
        "labels": list(fit.labels),
        "seeds": seeds,
        "config": dataclasses.asdict(st),
        "stopped": stopped,
        "rounds": [{k: v for k, v in rec.items() if k != "test_metrics"} for rec in records],
        "supervised": first["test_metrics"],
        "final": last["test_metrics"],
        "comparison": comparison,
    }
