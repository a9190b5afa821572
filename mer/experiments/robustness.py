"""The ``robustness`` stage: every model scored on corrupted test media (the MER-NOISE setting).

Each condition of ``robustness.conditions`` corrupts one role of the *test*
split (:mod:`mer.corpus.corrupt`): the test clips are decoded again, corrupted
with the clip's own seeded draw and encoded into their own feature table (the
encoder spec with ``corrupt`` set is a new encoder version), or, for
``role:drop``, an empty table of that version stands in so the role is absent.
Trained checkpoints then read the corrupted table in place of the clean one
(``swap`` in :mod:`mer.train.predict`); nothing is retrained on test media.

Rows of ``run_dir/robustness.json`` are conditions (``clean`` first), columns:

* ``robustness.models`` trained on every role (the job's own recipe, so a
  robust recipe, e.g. modality dropout, shows here as a new run);
* ``robustness.reference_models`` trained on ``reference_roles`` only (video +
  text): what a fusion model must beat once the audio is gone;
* ``final``: the self-trained final vote of the selftrain stage (its last
  round's checkpoints, with the same vote weights).

Every cell lists per-seed values (``train.seeds``): WAF and per-class F1.
Babble is speech of other people: ``babble_talkers`` tracks of train-split
clips laid end to end, summed into one recording (the train clips' speakers
overlap the test speakers, as in a room of colleagues; the utterances do not).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mer.config import Job
from mer.corpus.corrupt import SAMPLE_RATE, Corruption, parse
from mer.encoders import FeatureRef, feature_ref
from mer.errors import MerError
from mer.selftrain.rounds import score, seed_cell, split_truth, vote_test
from mer.train.cache import fit_many, fits_dir_of

BABBLE_SECONDS = 30.0
BABBLE_SEED = 20240905


def parse_condition(text: str) -> tuple[str, Corruption]:
    """``audio:drop`` -> ("audio", drop); ``blur@4`` -> ("video", blur@4); ``white@10`` -> audio."""
    role, sep, rest = str(text).partition(":")
    if sep and not rest[:1].isdigit():  # "mix@0:20" has a colon too, but not a role before it
        corruption = parse(rest)
        if corruption.kind != "drop" and corruption.role != role:
            raise MerError(f"robustness.conditions: {text!r}: {corruption.kind} corrupts {corruption.role}, not {role}")
        return role, corruption
    corruption = parse(text)
    if corruption.kind == "drop":
        raise MerError(f"robustness.conditions: {text!r}: say which role is dropped, e.g. audio:drop")
    return corruption.role, corruption


def condition_label(role: str, corruption: Corruption) -> str:
    """``no audio`` for a drop, else ``audio babble@10``."""
    return f"no {role}" if corruption.kind == "drop" else f"{role} {corruption}"


def test_rows(job: Job, role: str) -> pd.DataFrame:
    """The test split's clean manifest rows that have ``role``."""
    from mer.extract.stage import clean_rows

    rows = clean_rows(job)
    return rows[(rows["split"] == "test") & rows[f"has_{role}"].astype(bool)]


def babble_recording(job: Job, path: Path, talkers: int) -> Path:
    """Mix ``talkers`` tracks of train-split speech into one ``BABBLE_SECONDS`` WAV (made once)."""
    if path.exists():
        return path
    from scipy.io import wavfile

    from mer.corpus.media import load_audio
    from mer.encoders.base import audio_path
    from mer.extract.stage import clean_rows

    rows = clean_rows(job)
    train = rows[(rows["split"] == "train") & rows["has_audio"].astype(bool)].to_dict("records")
    if not train:
        raise MerError(f"{job.manifest}: babble needs train-split clips with audio, found none")
    rng = np.random.default_rng(BABBLE_SEED)
    n = int(BABBLE_SECONDS * SAMPLE_RATE)
    mix = np.zeros(n)
    for _ in range(max(1, talkers)):
        track, filled = np.zeros(n), 0
        while filled < n:
            wave = load_audio(audio_path(train[int(rng.integers(len(train)))]), sr=SAMPLE_RATE).astype(np.float64)
            wave /= np.sqrt(np.mean(wave**2)) + 1e-9
            take = min(n - filled, len(wave))
            track[filled:filled + take] = wave[:take]
            filled += take
        mix += track
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    wavfile.write(tmp, SAMPLE_RATE, (0.5 * mix / np.abs(mix).max()).astype(np.float32))
    tmp.replace(path)  # complete or absent: a crash leaves no half-written recording
    return path


def corrupted_features(job: Job, role: str, corruption: Corruption, echo) -> FeatureRef:
    """Extract (or find) the corrupted test features of ``role``; return their table's reference."""
    from mer.corpus.validate import append_quarantine
    from mer.extract.pipeline import extract_rows
    from mer.store import open_store

    store = open_store(job.store)
    clean = feature_ref(role, job.encoders[role])
    if corruption.kind == "drop":
        ref = feature_ref(role, dataclasses.replace(job.encoders[role], corrupt="drop", noise_source=""))
        store.create_empty_like(ref.table, store, like=clean.table)
        return ref
    source = ""
    if corruption.kind == "babble":
        source = str(babble_recording(job, Path(job.run_dir) / "robustness" / "babble.wav", job.robustness.babble_talkers))
    spec = dataclasses.replace(job.encoders[role], corrupt=str(corruption), noise_source=source)
    label = condition_label(role, corruption)

    def quarantine(failed: list[dict]) -> None:
        append_quarantine(job.run_dir, [{**f, "stage": f"robustness:{label}"} for f in failed])

    result = extract_rows(test_rows(job, role), spec, job.store, job.extract, on_failed=quarantine)
    echo(f"   robustness: {label} -> {result['table']}: written {result['written']}, skipped {result['skipped']}")
    return feature_ref(role, spec)


def cells(job: Job, checkpoints: dict[str, dict[int, Path]], swap: dict[str, FeatureRef], reads: dict,
          truth: pd.DataFrame | None) -> dict[str, dict]:
    """Model -> per-seed test metrics, reading ``swap``'s tables for the roles each model uses."""
    from mer.train.predict import predict

    out = {}
    for model, by_seed in checkpoints.items():
        out[model] = seed_cell([score(predict(ckpt, job.store, "test", swap=swap, reads=reads), truth, job.labels)
                                for ckpt in by_seed.values()])
    return out


def final_cell(job: Job, swap: dict[str, FeatureRef], reads: dict, truth: pd.DataFrame | None) -> dict | None:
    """The self-trained final vote per seed, on the (corrupted) test features; None without selftrain."""
    from mer.train.predict import predict

    path = Path(job.run_dir) / "selftrain.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    weights = summary["rounds"][-1].get("vote_weights")
    per_seed = []
    for i in range(len(job.train.seeds)):
        tables = {m: predict(ckpts[i], job.store, "test", swap=swap, reads=reads)
                  for m, ckpts in summary["final_checkpoints"].items()}
        per_seed.append(score(vote_test(job, tables, weights), truth, job.labels))
    return seed_cell(per_seed)


def reference_job(job: Job) -> Job:
    """The job restricted to ``robustness.reference_roles`` (the models that never hear audio)."""
    roles = job.robustness.reference_roles
    missing = [r for r in roles if r not in job.encoders]
    if missing:
        raise MerError(f"robustness.reference_roles: {missing} have no encoder (encoders: {', '.join(job.encoders)})")
    return dataclasses.replace(job, encoders={r: job.encoders[r] for r in roles})


def supervised_checkpoints(job: Job, models: list[str], fits_dir: Path) -> dict[str, dict[int, Path]]:
    """Model -> seed -> checkpoint, fitted once and cached in ``fits_dir``."""
    ckpts = fit_many(job, [(m, s) for m in models for s in job.train.seeds], fits_dir=fits_dir)
    return {m: {s: ckpts[(m, s)] for s in job.train.seeds} for m in models}


def table(job: Job, models: list[str], fits_dir: Path, echo, with_reference: bool = True,
          with_final: bool = True) -> list[dict]:
    """One row per condition: ``{"condition", "role", "cells": {column: seed cell}}``, clean first."""
    rob = job.robustness
    main = supervised_checkpoints(job, models, fits_dir)
    ref_job = reference_job(job) if with_reference and rob.reference_models else None
    ref = supervised_checkpoints(ref_job, rob.reference_models, fits_dir) if ref_job else {}
    truth = split_truth(job, "test")  # read once for every condition and column
    rows = []
    for text in ["clean", *rob.conditions]:
        role, corruption = (None, None) if text == "clean" else parse_condition(text)
        if role is not None and role not in job.encoders:
            raise MerError(f"robustness.conditions: {text!r}: the job has no {role} encoder")
        swap = {} if role is None else {role: corrupted_features(job, role, corruption, echo)}
        reads: dict = {}  # the condition's test features, read once for every checkpoint
        row = cells(job, main, swap, reads, truth)
        ref_swap = {r: s for r, s in swap.items() if ref_job and r in ref_job.encoders}
        for model, cell in cells(ref_job, ref, ref_swap, reads, truth).items() if ref_job else ():
            row[f"{'+'.join(rob.reference_roles)}: {model}"] = cell
        final = final_cell(job, swap, reads, truth) if with_final and rob.final else None
        if final is not None:
            row["final (self-trained vote)"] = final
        rows.append({"condition": "clean" if role is None else condition_label(role, corruption), "role": role,
                     "cells": row})
        echo(f"   robustness: {rows[-1]['condition']}: " + ", ".join(
            f"{m} {np.mean(c['waf']) * 100:.1f}" for m, c in row.items() if c["waf"]))
    return rows


def run(job: Job, echo=print) -> dict:
    """Score every model on every condition; write ``run_dir/robustness.json``."""
    rows = table(job, job.robustness.models, fits_dir_of(job), echo)
    out = Path(job.run_dir) / "robustness.json"
    out.write_text(json.dumps({"name": job.name, "seeds": list(job.train.seeds), "labels": job.labels,
                               "recipe": {k: v for k, v in dataclasses.asdict(job.train).items()},
                               "conditions": rows}, indent=2, default=float))
    return {"conditions": len(rows), "output": str(out)}

