"""Run a job's stages in order: the one executor edge that starts Ray.

Each stage (:mod:`mer.stages`) is a function ``run(job, echo) -> dict`` in its own package; it reads its
inputs from the store or ``run_dir`` and writes its outputs there, so a stage can
be rerun alone and a rerun skips finished work. The same code runs embedded
(``ray.init()`` starts a local instance) and inside a Ray job on a cluster
(``ray.init()`` joins the cluster the job runs on).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from mer.config import Job, absolute_paths, with_values
from mer.runfolder import STAGES as STAGES_FILE
from mer.runfolder import RunFolder
from mer.stages import STAGES, load
from mer.store.options import set_store_options

_RAY_START = threading.Lock()


def ensure_ray(attempts: int = 3, **init_kwargs) -> None:
    """Start embedded Ray, or join the cluster this process runs in.

    Ray gives a new raylet a fixed 30 s to register, which a saturated machine
    can miss; start-up is tried ``attempts`` times. ``init_kwargs`` go to
    ``ray.init`` (tests pass fake GPUs). Ray's own start-up INFO lines are kept
    out of the console (``logging_level`` WARNING) unless asked for.
    """
    import logging

    import ray

    init_kwargs.setdefault("logging_level", logging.WARNING)

    with _RAY_START:  # concurrent fits (threads) may all ask at once
        if ray.is_initialized():
            return
        for attempt in range(attempts):
            try:
                ray.init(**init_kwargs)
                return
            except Exception:
                ray.shutdown()
                if attempt == attempts - 1:
                    raise


def check_job(job: Job) -> None:
    """Every name the job's stages will look up, checked now: encoders first, then each stage's own settings.

    ``mer run``, ``mer tune`` and ``mer submit`` call it before any work, so a
    misspelt model, vote, encoder or condition is one line, not a failure after
    extraction.

    Raises:
        MerError: the first setting at fault, named by its key.
    """
    from mer.encoders import check_streams

    check_streams(job.streams())
    for name in job.stages:
        if STAGES[name].check:
            load(STAGES[name].check)(job)


def absolute(job: Job) -> Job:
    """The job with its relative local paths made absolute (Ray workers run in other directories)."""
    return with_values(job, absolute_paths(job, Path.cwd()))


def run_tune(job: Job, echo=print) -> dict:
    """``mer tune``: start or join Ray, then search ``job.tune.space`` (:func:`mer.tune.tune_job`).

    The job's ``store_options`` are applied before Ray starts, as in :func:`run_job`.
    """
    from mer.tune import tune_job

    check_job(job)
    job = absolute(job)
    set_store_options(job.store_options)
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    ensure_ray()
    return tune_job(job, echo)


def run_serve(args, host: str, port: int) -> str:
    """``mer serve``: start or join Ray, then start the Serve app (:func:`mer.serve.app.start`); returns its URL."""
    from mer.serve.app import start

    ensure_ray()
    return start(args, host, port)


def run_job(job: Job, echo=print) -> dict:
    """Run every stage of ``job`` in order; return ``{stage: summary}``.

    Every stage's settings are checked first (:func:`mer.stages.check_job`),
    so a misspelt name fails before any work. Relative local paths are made
    absolute: Ray workers (Ray Train's especially) run in other working
    directories. The job's ``store_options`` go into this process's
    environment before Ray starts, so local workers inherit them
    (:mod:`mer.store.options`).
    """
    check_job(job)
    job = absolute(job)
    set_store_options(job.store_options)
    run_dir = RunFolder(job.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.config.write_text(job.to_yaml())
    if any(STAGES[name].needs_ray for name in job.stages):
        # Workers' own console lines (Ray core warnings, epoch lines) reach the
        # console only with -v; they stay in Ray's session logs either way.
        ensure_ray(log_to_driver=job.execution.verbose)
    results = {}
    for name in job.stages:
        echo(f"== stage {name}")
        start = time.perf_counter()
        summary = STAGES[name].function()(job, echo) or {}
        updates = summary.get("job_updates")
        if updates:  # e.g. finetune: the fine-tuned encoder for the stages after it
            job = with_values(job, updates)
            run_dir.config.write_text(job.to_yaml())
        summary["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = summary
        echo(f"   {name} done in {summary['seconds']} s")
    run_dir.write(STAGES_FILE, {"stages": json.loads(json.dumps(results, default=str))})
    return results
