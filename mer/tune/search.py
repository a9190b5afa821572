"""Ray Tune over the job's ``tune.space``: every trial is a K-fold CV on the labeled train split.

A trial (:func:`trial`) applies its sampled values to the job's ``train``
recipe, reads the pinned feature tables' train split and runs
:func:`mer.train.crossval.cross_validate` for each of ``tune.seeds``,
reporting the running out-of-fold weighted F1 after every fold (ASHA stops a
trailing trial there). Trials are Ray Tune trials, so on a cluster they spread
over its nodes; the search lives in ``run_dir/tune/<name>``, and a rerun of a
killed search restores it (finished trials are kept, the rest rerun).

Random search draws from ``tune.seed``, and each trial's score is a pure
function of its values and the pinned data, so a resumed search ends with
the same best trial as one that never stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from ray.tune import Callback

from mer.config import ConfigError, Job, job_from_dict, with_values
from mer.errors import MerError
from mer.runfolder import TUNE_BEST, TUNE_PLOT, TUNE_RESULTS, RunFolder
from mer.train.data import ReadPlan
from mer.train.key import digest, fingerprint
from mer.train.stage import fit_settings
from mer.tune.results import METRIC, rank_trials, write_results


def search_space(space: dict[str, dict]) -> dict:
    """``tune.space`` -> Ray Tune sampling objects, keyed by the dotted job key."""
    from ray import tune

    make = {"choice": tune.choice, "uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    out = {}
    for key, dist in space.items():
        kind, values = next(iter(dist.items()))
        out[key] = make[kind](values) if kind == "choice" else make[kind](*values)
    return out


def trial(params: dict, *, job_data: dict, plan: ReadPlan) -> None:
    """One Ray Tune trial: CV of the job's recipe with ``params`` applied, reported fold by fold."""
    import torch
    from ray import tune

    from mer.train.crossval import cross_validate
    from mer.train.data import read_plan

    job = with_values(job_from_dict(job_data), params)
    torch.set_num_threads(max(1, int(job.tune.cpus_per_trial)))
    data = read_plan(plan, "train")
    folds, seeds = job.tune.folds, job.tune.seeds
    finished: list[float] = []
    for i, seed in enumerate(seeds):
        def report(fold: int, score: dict) -> None:
            running = finished + [score["weighted_f1"]]
            last = fold == folds - 1 and i == len(seeds) - 1
            tune.report({METRIC: float(np.mean(running)), "folds_done": i * folds + fold + 1,
                         "cv_std": float(np.std(running, ddof=1)) if last and len(running) > 1 else 0.0})

        score, _ = cross_validate(data, job.labels, job.train, job.train.model, seed, folds, on_fold=report)
        finished.append(score["weighted_f1"])


class _Progress(Callback):
    """Prints a line per finished trial: how many of how many, its score, the best so far."""

    def __init__(self, echo: Callable[[str], None], total: int):
        self.echo, self.total, self.done, self.best = echo, total, 0, None

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        score = (trial.last_result or {}).get(METRIC)
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        shown = "stopped early" if score is None else f"{score:.4f}"
        self.echo(f"   trial {self.done}/{self.total}: CV weighted F1 {shown}, best so far {self.best or 0:.4f}")


def experiment_name(job: Job) -> str:
    """Stable name of a search: the job name plus a hash of the recipe, the search and the data it reads."""
    return f"{job.name}-{digest([fingerprint(fit_settings(job)), dataclasses.asdict(job.tune)])[:8]}"


def check(job: Job) -> None:
    """The searched model names, checked before any stage runs (the keys were checked when the job was read)."""
    from mer.models import MODELS

    models = (job.tune.space.get("train.model") or {}).get("choice", [job.train.model])
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"tune.space.train.model: unknown model '{unknown[0]}' (known: {', '.join(MODELS)})")


def write_best(job: Job, values: dict, best, run: RunFolder) -> None:
    """``best.yaml``: the job with the best trial's values, the stages but ``tune``, ``run_dir`` ``<run_dir>/best``."""
    stages = [s for s in job.stages if s != "tune"] or ["train", "evaluate", "report"]
    best_job = with_values(job, {**values, "run_dir": str(run.path / "best"), "tune.space": {}, "stages": stages})
    (run / TUNE_BEST).write_text(
        f"# chosen by mer tune: {best[METRIC]:.4f} weighted F1, {job.tune.folds}-fold CV on the labeled train split\n"
        + best_job.to_yaml())


def run(job: Job, echo: Callable[[str], None] = print) -> dict:
    """The ``tune`` stage: ``mer submit JOB.yaml stages=[tune]`` runs the search on a cluster's nodes."""
    return tune_job(job, echo)


def tune_job(job: Job, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) the search of ``job.tune``; write the results into ``job.run_dir``.

    Ray must be running (the CLI starts or joins it). Returns a summary with the
    best values, their CV score and the files written.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    cfg = job.tune
    if not cfg.space:
        raise MerError("tune.space: empty; name at least one train.<key> to search (see jobs/tune.yaml)")
    plan = fit_settings(job).plan()
    run = RunFolder(job.run_dir)
    storage = run.tune_state.resolve()
    name = experiment_name(job)
    trainable = tune.with_resources(
        tune.with_parameters(trial, job_data=dataclasses.asdict(job), plan=plan), {"cpu": cfg.cpus_per_trial})
    if tune.Tuner.can_restore(storage / name):
        echo(f"   resuming the search in {storage / name}")
        tuner = tune.Tuner.restore(str(storage / name), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=search_space(cfg.space))
    else:
        total_folds = cfg.folds * len(cfg.seeds)
        scheduler = (ASHAScheduler(time_attr="folds_done", max_t=total_folds, grace_period=min(cfg.grace_folds, total_folds))
                     if cfg.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg.space),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=cfg.num_samples, scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=cfg.seed),
                max_concurrent_trials=cfg.max_concurrent or None),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      callbacks=[_Progress(echo, cfg.num_samples)]),
        )
    results = tuner.fit()
    rows = []
    for index, result in enumerate(sorted(results, key=lambda r: r.path)):
        metrics = result.metrics or {}
        done = metrics.get("folds_done", 0)
        rows.append({"trial": index, "params": {k: result.config[k] for k in cfg.space},
                     METRIC: metrics.get(METRIC), "cv_std": metrics.get("cv_std"), "folds_done": done,
                     "status": "error" if result.error else
                     ("complete" if done == cfg.folds * len(cfg.seeds) else "stopped")})
    complete = [r for r in rows if r["status"] == "complete"]
    if not complete:
        raise MerError(f"tune: no trial finished (see {storage / name})")
    table = rank_trials(rows)
    values, best = write_results(table, run)
    write_best(job, values, best, run)
    summary = {"best": values, "best_cv_weighted_f1": float(best[METRIC]), "trials": len(table),
               "files": [str(run / n) for n in (TUNE_RESULTS, TUNE_PLOT, TUNE_BEST)],
               "experiment": str(storage / name), "stopped": int((table["status"] == "stopped").sum()),
               "errors": int((table["status"] == "error").sum())}
    from mer.store import open_store

    open_store(job.store).log_run(f"tune/{name}", job.to_yaml(), {"best": summary["best"],
                                  METRIC: summary["best_cv_weighted_f1"], "trials": table.to_dict("records")})
    return summary
