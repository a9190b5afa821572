"""The ``finetune`` stage: fine-tune, export, then re-extract the role as a new feature version.

With ``finetune.folds`` >= 2 (the default, 5) the fine-tuning is cross-fitted
(:mod:`mer.finetune.crossfit`): each labeled row is extracted by a fold model
that never trained on it, every other row by a model trained on all labeled
rows or by the fold models' mean (``finetune.crossfit_other``). With 0 or 1,
one model trains on every labeled row and extracts every row (the stacking
leak that cross-fitting removes).

The stage does not edit the job: it returns ``job_updates``
(``{"encoders.<role>.model": <export folder>}``), which the runner applies
before the next stage. The new folder's ``encoder_version`` differs (new path
and weights), so the stages after ``finetune`` in the same job (train,
selftrain...) read the fine-tuned features from a new table.
"""

from __future__ import annotations

from pathlib import Path

from mer.config import ConfigError, Job, with_values
from mer.errors import MerError
from mer.finetune.crossfit import RECORD_FILE, crossfit, other_path, read_record
from mer.finetune.data import INPUT_COLUMN
from mer.finetune.launch import export_dir, finetune
from mer.finetune.loop import train_loop_per_worker
from mer.finetune.settings import FinetuneSettings


def finetune_settings(job: Job) -> FinetuneSettings:
    """What the job's fine-tune reads and where it writes."""
    role = job.finetune.role
    return FinetuneSettings(cfg=job.finetune, spec=job.encoder(role) if role in job.encoders else None,
                            labels=list(job.labels), manifest=job.manifest, store=job.store, run_dir=job.run_dir,
                            max_failures=job.execution.max_failures)


def check(job: Job) -> None:
    """The role fine-tuned must be one mer fine-tunes and have an encoder, checked before any stage runs."""
    role = job.finetune.role
    if role not in INPUT_COLUMN:
        raise ConfigError(f"finetune.role: expected {' or '.join(INPUT_COLUMN)}, got {role!r}")
    if role not in job.encoders:
        raise ConfigError(f"finetune.role={role}: the job needs an encoders.{role} with a model (hub name or folder)")


def run(job: Job, echo=print, worker_loop=train_loop_per_worker) -> dict:
    """Fine-tune ``job.finetune.role`` (cross-fitted or single); re-extract it unless ``finetune.reextract`` is false.

    Args:
        worker_loop: the Ray Train per-worker function (tests inject faults here).
    """
    ft = finetune_settings(job)
    role = job.finetune.role
    if job.finetune.folds >= 2:
        summary = crossfit(ft, echo, worker_loop)
    else:
        if (export_dir(ft) / RECORD_FILE).exists():
            # Its fingerprint (the table version) would be the cross-fitted table's.
            raise MerError(f"finetune.out {export_dir(ft)} holds a cross-fitted export; "
                           f"set finetune.out to another folder for finetune.folds={job.finetune.folds}")
        summary = finetune(ft, worker_loop=worker_loop)
        echo(f"   {role}: trained on {summary['examples']} rows" + (": finished before, skipped" if summary["skipped"] else ""))
    updates = {f"encoders.{role}.model": summary["out"]}
    if job.finetune.reextract:
        updated = with_values(job, updates)
        if job.finetune.folds >= 2:
            summary["extract"] = extract_crossfit(updated, echo)
        else:
            from mer.extract.stage import run as extract

            summary["extract"] = extract(updated, echo, roles=[role])
    return {**summary, "job_updates": updates}


def extract_crossfit(job: Job, echo=print) -> dict:
    """Extract ``job.finetune.role`` into the cross-fitted table: each fold's rows with its model, the rest with the full one.

    ``job.encoders.<role>.model`` must already name the cross-fitted folder
    (its version is the table's). The full model's pass takes every manifest
    row that no fold extracts, so a fold row that failed to extract is never
    filled in by a model that trained on it. Progress: the extract stage's
    line per model.

    Returns:
        ``{role: {table, encoder, version, written, skipped, failed, by_model}}``
        with ``by_model``: rows written per model path.
    """
    from mer.corpus.manifest import read_manifest
    from mer.encoders import encoder_version
    from mer.extract.stage import run as extract

    role = job.finetune.role
    folder = Path(job.encoder(role).model)
    record = read_record(folder)
    version = encoder_version(job.encoder(role))
    held = {sid for model in record["folds"] for sid in model["extracted"]}
    rest = [sid for sid in read_manifest(job.manifest)["sample_id"].astype(str) if sid not in held]
    passes = [(f"fold {k + 1}/{len(record['folds'])} model", m["path"], folder / m["path"], m["extracted"])
              for k, m in enumerate(record["folds"])]
    # the other rows: the folder itself, which loads as the full model or as the fold average
    other = ("full model" if record["other"] == "full" else "fold average", other_path(record), folder, rest)
    results = {}
    for label, path, model, ids in [*passes, other]:
        model_job = with_values(job, {f"encoders.{role}.model": str(model)})
        results[path] = extract(
            model_job, lambda line, label=label: echo(f"{line} [{label}]"), roles=[role], sample_ids=ids,
            version=version,
        )[role]
    first = next(iter(results.values()))
    return {role: {
        "table": first["table"], "encoder": first["encoder"], "version": version,
        **{key: sum(r[key] for r in results.values()) for key in ("written", "skipped", "failed")},
        "by_model": {path: r["written"] for path, r in results.items()},
    }}
