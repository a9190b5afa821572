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

Every cell lists per-seed values (``train.seeds``): WAF and per-class F1; every row
says whether the training recipe saw its condition (``seen_in_training``).
Babble is speech of other people: ``babble_talkers`` tracks of train-split
clips laid end to end, summed into one recording (the train clips' speakers
overlap the test speakers, as in a room of colleagues; the utterances do not).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from mer.config import Job, role_of
from mer.corpus.corrupt import SAMPLE_RATE, Corruption, heard_in_training, parse
from mer.corpus.labels import split_truth
from mer.corpus.stage import clean_rows
from mer.encoders import FeatureRef, feature_ref
from mer.errors import MerError
from mer.metrics import score, seed_cell
from mer.runfolder import ROBUSTNESS, VOTE, RunFolder
from mer.train.cache import fit_many, predict_cached
from mer.train.stage import fit_settings

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
    rows = clean_rows(job)
    return rows[(rows["split"] == "test") & rows[f"has_{role}"].astype(bool)]


def babble_recording(job: Job, path: Path, talkers: int) -> Path:
    """Mix ``talkers`` tracks of train-split speech into one ``BABBLE_SECONDS`` WAV (made once)."""
    if path.exists():
        return path
    from scipy.io import wavfile

    from mer.corpus.media import load_audio
    from mer.encoders.base import audio_path

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


def corrupted_features(job: Job, role: str, corruption: Corruption, echo) -> dict[str, FeatureRef]:
    """Extract (or find) the corrupted test features of every stream of ``role``; stream -> their table's reference."""
    from mer.corpus.validate import append_quarantine
    from mer.extract.pipeline import extract_rows
    from mer.store import open_store

    store = open_store(job.store)
    streams = {s: spec for s, spec in job.streams().items() if role_of(s) == role}
    if corruption.kind == "drop":
        out = {}
        for stream, spec in streams.items():
            ref = feature_ref(stream, dataclasses.replace(spec, corrupt="drop", noise_source=""))
            store.create_empty_like(ref.table, store, like=feature_ref(stream, spec).table)
            out[stream] = ref
        return out
    source = ""
    if corruption.kind == "babble":
        source = str(babble_recording(job, RunFolder(job.run_dir).babble, job.robustness.babble_talkers))
    label = condition_label(role, corruption)

    def quarantine(failed: list[dict]) -> None:
        append_quarantine(job.run_dir, [{**f, "stage": f"robustness:{label}"} for f in failed])

    out = {}
    for stream, spec in streams.items():
        spec = dataclasses.replace(spec, corrupt=str(corruption), noise_source=source)
        result = extract_rows(test_rows(job, role), spec, job.store, job.extract, on_failed=quarantine)
        echo(f"   robustness: {label} ({stream}) -> {result['table']}: written {result['written']}, "
             f"skipped {result['skipped']}")
        out[stream] = feature_ref(stream, spec)
    return out


def cells(job: Job, checkpoints: dict[str, dict[int, Path]], swap: dict[str, FeatureRef],
          truth: pd.DataFrame | None) -> dict[str, dict]:
    """Model -> per-seed test metrics, reading ``swap``'s tables for the streams each model uses."""
    order = [(m, s) for m, by_seed in checkpoints.items() for s in by_seed]
    frames = dict(zip(order, predict_cached([checkpoints[m][s] for m, s in order], job.store, "test",
                                            job.execution, swap)))
    return {m: seed_cell([score(frames[(m, s)], truth, job.labels) for s in by_seed])
            for m, by_seed in checkpoints.items()}


def final_cell(job: Job, swap: dict[str, FeatureRef], truth: pd.DataFrame | None) -> dict | None:
    """The self-trained final vote per seed, on the (corrupted) test features; None without selftrain."""
    from mer.config import SelftrainConfig
    from mer.voting import final_vote

    run = RunFolder(job.run_dir)
    if not (run / "selftrain.json").exists():
        return None
    final = run.final_predictor()
    if final.kind != VOTE:
        return None
    per_seed = []
    for i in range(len(final.seeds)):
        models = list(final.checkpoints)
        frames = predict_cached([final.checkpoints[m][i] for m in models], job.store, "test", job.execution, swap)
        per_seed.append(score(final_vote(dict(zip(models, frames)), final.labels, SelftrainConfig(**final.selftrain),
                                         final.weights), truth, job.labels))
    return seed_cell(per_seed)


def seen_in_training(job: Job, corruption: Corruption) -> bool:
    """A missing role is trained on by modality dropout, noise by ``audio_augment``'s noisy copies."""
    if corruption.kind == "drop":
        return job.train.modality_dropout > 0
    return heard_in_training(corruption, job.train.audio_augment)


def reference_job(job: Job) -> Job:
    """The job restricted to ``robustness.reference_roles`` (the models that never hear audio)."""
    roles = job.robustness.reference_roles
    missing = [r for r in roles if r not in job.encoders]
    if missing:
        raise MerError(f"robustness.reference_roles: {missing} have no encoder (encoders: {', '.join(job.encoders)})")
    return dataclasses.replace(job, encoders={r: job.encoders[r] for r in roles})


def check(job: Job) -> None:
    """Conditions, models and reference roles, checked before any stage runs."""
    from mer.models import check_model

    for text in job.robustness.conditions:
        role, _ = parse_condition(text)
        if role not in job.encoders:
            raise MerError(f"robustness.conditions: {text!r}: the job has no {role} encoder")
    for model in job.robustness.models:
        check_model(model, job.streams(), "robustness.models", job.train)
    if job.robustness.reference_models:
        ref = reference_job(job)
        for model in job.robustness.reference_models:
            check_model(model, ref.streams(), "robustness.reference_models", job.train)


def supervised_checkpoints(job: Job, models: list[str], fits_dir: Path) -> dict[str, dict[int, Path]]:
    """Model -> seed -> checkpoint, fitted once and cached in ``fits_dir``."""
    ckpts = fit_many(fit_settings(job, fits_dir), [(m, s) for m in models for s in job.train.seeds])
    return {m: {s: ckpts[(m, s)] for s in job.train.seeds} for m in models}


def table(job: Job, models: list[str], fits_dir: Path, echo, with_reference: bool = True,
          with_final: bool = True) -> list[dict]:
    """One row per condition: ``{"condition", "role", "cells": {column: seed cell}}``, clean first."""
    rob = job.robustness
    main = supervised_checkpoints(job, models, fits_dir)
    ref_job = reference_job(job) if with_reference and rob.reference_models else None
    ref = supervised_checkpoints(ref_job, rob.reference_models, fits_dir) if ref_job else {}
    truth = split_truth(job.manifest, "test")  # read once for every condition and column
    rows = []
    for text in ["clean", *rob.conditions]:
        role, corruption = (None, None) if text == "clean" else parse_condition(text)
        if role is not None and role not in job.encoders:
            raise MerError(f"robustness.conditions: {text!r}: the job has no {role} encoder")
        swap = {} if role is None else corrupted_features(job, role, corruption, echo)
        row = cells(job, main, swap, truth)
        ref_swap = {r: s for r, s in swap.items() if ref_job and r in ref_job.streams()}
        for model, cell in cells(ref_job, ref, ref_swap, truth).items() if ref_job else ():
            row[f"{'+'.join(rob.reference_roles)}: {model}"] = cell
        final = final_cell(job, swap, truth) if with_final and rob.final else None
        if final is not None:
            row["final (self-trained vote)"] = final
        rows.append({"condition": "clean" if role is None else condition_label(role, corruption), "role": role,
                     "seen_in_training": role is None or seen_in_training(job, corruption), "cells": row})
        echo(f"   robustness: {rows[-1]['condition']}: " + ", ".join(
            f"{m} {np.mean(c['waf']) * 100:.1f}" for m, c in row.items() if c["waf"]))
    return rows


def run(job: Job, echo=print) -> dict:
    """Score every model on every condition; write ``run_dir/robustness.json``."""
    run_dir = RunFolder(job.run_dir)
    rows = table(job, job.robustness.models, run_dir.checkpoints, echo)
    out = run_dir.write(ROBUSTNESS, {"name": job.name, "seeds": list(job.train.seeds), "labels": job.labels,
                                     "recipe": dataclasses.asdict(job.train), "conditions": rows})
    return {"conditions": len(rows), "output": str(out)}

