"""The ablation runner behind ``jobs/ablation.yaml``: trains every cell, writes ablation.json.

``mer/report`` only renders; this module trains (through ``mer.train`` and the
self-training rounds), so it lives where Ray may be used. Every cell is a list of
per-seed values (``train.seeds``) that the report shows as mean +- std. Variants
are the base job with a few keys overridden; they run in
``run_dir/ablation/<variant>/`` and share one fit cache
(``run_dir/checkpoints``, see ``mer.train.cache``), so the supervised fits of
round 0 are trained once for every voting / threshold variant.

Axes (``ablation`` section of the job):

* ``fusion``: ``ablation.fusion_models`` (+ the audio-only model), supervised only.
* ``voting``: supervised vote, + self-training with majority vote, + prior vote.
* ``threshold``: prior-vote self-training at each ``ablation.thresholds``: labels
  added, their accuracy against ``truth``, test WAF.
* ``balance``: the voting variants again on ``ablation.balanced_manifest`` (a corpus
  with a balanced test split, e.g. ``mer demo-data --balanced-test``), extracted
  into its own store ``<store>_balanced`` because demo sample ids repeat; its
  hidden labels are ``ablation.balanced_truth``, never the main corpus' ``truth``.
* ``corruption``: the supervised fusion models on the test split under each of
  ``robustness.conditions`` (noise kinds and SNRs, reverb, clipping, blur, low
  light, occlusion, a dropped modality), through :mod:`mer.experiments.robustness`:
  corrupted features are their own encoder version in the same store.
* ``audio_encoder``: ``ablation.audio_encoders`` swapped in for ``encoders.audio``
  (a new feature table each), supervised AGT and audio-only model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mer.config import EncoderSpec, Job, with_values
from mer.corpus.labels import split_truth
from mer.metrics import score, seed_cell
from mer.runfolder import ABLATION, RunFolder
from mer.selftrain.rounds import run_rounds
from mer.selftrain.stage import truth_of
from mer.train.cache import fit_many, predict_cached
from mer.train.stage import fit_settings


def variant(job: Job, name: str, **values) -> Job:
    """The job with dotted keys replaced (``**{"selftrain.voting": "majority"}``), run in ``run_dir/ablation/<name>``."""
    return with_values(job, {**values, "run_dir": str(RunFolder(job.run_dir).variant(name).path)})


def check(job: Job) -> None:
    """The fusion models and the alternative audio encoders, checked before any stage runs."""
    from mer.encoders import check_streams
    from mer.models import check_model

    for model in [*job.ablation.fusion_models, "agt", "unimodal"]:
        check_model(model, job.streams(), "ablation.fusion_models", job.train)
    for spec in job.ablation.audio_encoders:
        spec = spec if isinstance(spec, dict) else {"alias": spec}
        check_streams({"audio": EncoderSpec(**spec)})


def supervised_cells(job: Job, models: list[str], fits_dir: Path) -> dict[str, dict]:
    """Per-seed test metrics of models trained on the labeled split only."""
    truth = split_truth(job.manifest, "test")
    runs = [(m, s) for m in models for s in job.train.seeds]
    ckpts = fit_many(fit_settings(job, fits_dir), runs)
    frames = dict(zip(runs, predict_cached([ckpts[r] for r in runs], job.store, "test", job.execution)))
    return {m: seed_cell([score(frames[(m, s)], truth, job.labels) for s in job.train.seeds]) for m in models}


def selftrain_variant(job: Job, fits_dir: Path, echo) -> dict:
    """Self-training of a variant in its own run folder, sharing ``fits_dir``."""
    return run_rounds(fit_settings(job, fits_dir), job.selftrain, RunFolder(job.run_dir), truth_of(job), echo=echo)


def selftrain_cell(summary: dict) -> dict:
    """Final per-seed vote metrics plus labels added and their accuracy."""
    rounds = summary["rounds"]
    cell = dict(rounds[-1]["vote_per_seed"])
    added = sum(r["added"] for r in rounds)
    cell["added"] = [float(added)]
    hits = [r["pseudo_accuracy"] * r["added"] for r in rounds if r.get("pseudo_accuracy") is not None]
    if hits:
        cell["pseudo_accuracy"] = [sum(hits) / max(added, 1)]
    return cell


def voting_cells(job: Job, fits_dir: Path, tag: str, echo) -> list[dict]:
    """Supervised vote, + self-training (majority), + prior voting on one corpus."""
    cells = []
    for voting in ("majority", "prior"):
        var = variant(job, f"{tag}{voting}", **{"selftrain.voting": voting})
        summary = selftrain_variant(var, fits_dir, echo)
        if voting == "majority":
            cells.append({"variant": f"{tag}supervised vote (majority, round 0)", **summary["rounds"][0]["vote_per_seed"]})
        label = "+ self-training (majority vote)" if voting == "majority" else "+ prior-knowledge voting"
        cells.append({"variant": f"{tag}{label}", **selftrain_cell(summary)})
    return cells


def corruption_cells(job: Job, fits_dir: Path, echo) -> list[dict]:
    """The fusion models on clean and corrupted test media (``robustness.conditions``)."""
    from mer.experiments.robustness import table

    rows = table(job, job.ablation.fusion_models, fits_dir, echo, with_reference=False, with_final=False)
    return [{"variant": f"{model}, {row['condition']}", **cell} for row in rows for model, cell in row["cells"].items()]


def spec_label(spec: dict) -> str:
    """``alias`` plus the settings that differ from the defaults: ``logmel (max_seconds=1.0)``."""
    defaults = dataclasses.asdict(EncoderSpec(alias=spec["alias"]))
    changed = [f"{k}={v}" for k, v in spec.items() if k != "alias" and v != defaults.get(k)]
    return spec["alias"] + (f" ({', '.join(changed)})" if changed else "")


def encoder_cells(job: Job, fits_dir: Path, echo) -> list[dict]:
    """Supervised AGT and audio-only model with each alternative audio encoder."""
    from mer.extract.stage import run as extract

    cells = []
    for spec in [job.encoder("audio"), *job.ablation.audio_encoders]:
        spec = spec if isinstance(spec, dict) else dataclasses.asdict(spec) if isinstance(spec, EncoderSpec) else {"alias": spec}
        label = spec_label(spec)
        var = variant(job, "audio_" + "".join(c if c.isalnum() else "_" for c in label).strip("_"),
                      **{"encoders.audio": spec, "extract.roles": ["audio"]})
        if spec != dataclasses.asdict(job.encoder("audio")):
            echo(f"   ablation: extract audio with {label}")
            extract(var, echo)
        for model, cell in supervised_cells(var, ["agt", "unimodal"], fits_dir).items():
            cells.append({"variant": f"{label}: {model}", **cell})
    return cells


def run(job: Job, echo=print) -> dict:
    """Train every ablation cell of ``job`` and write ``run_dir/ablation.json``."""
    fits_dir = RunFolder(job.run_dir).checkpoints
    rep = job.ablation
    axes: dict[str, list[dict]] = {}
    notes = []

    echo("   ablation: fusion (supervised)")
    fusion = supervised_cells(job, [*rep.fusion_models, "unimodal"], fits_dir)
    axes["fusion"] = [{"variant": m if m != "unimodal" else f"unimodal ({job.train.unimodal_role})", **c} for m, c in fusion.items()]

    echo("   ablation: self-training and voting")
    base = job.train.model
    axes["voting"] = [{"variant": f"supervised {base}", **fusion.get(base, {})}, *voting_cells(job, fits_dir, "", echo)]

    echo("   ablation: threshold sweep")
    axes["threshold"] = []
    for tau in rep.thresholds:
        var = variant(job, f"tau{tau}", **{"selftrain.threshold": tau, "selftrain.voting": "prior"})
        axes["threshold"].append({"variant": f"tau = {tau}", **selftrain_cell(selftrain_variant(var, fits_dir, echo))})

    axes["balance"] = []
    if rep.balanced_manifest:
        echo("   ablation: balanced test set")
        from mer.extract.stage import run as extract

        bal = variant(job, "balanced", manifest=rep.balanced_manifest, truth=rep.balanced_truth,
                      store=str(job.store).rstrip("/") + "_balanced")
        extract(bal, echo)
        bal_fits = RunFolder(bal.run_dir).checkpoints
        shifted = [dict(c, variant=f"shifted: {c['variant']}") for c in axes["voting"]]
        balanced = [{"variant": f"balanced: supervised {base}", **supervised_cells(bal, [base], bal_fits)[base]}]
        axes["balance"] = shifted + balanced + voting_cells(bal, bal_fits, "balanced: ", echo)
    else:
        notes.append("balance: set ablation.balanced_manifest (mer demo-data OUT --balanced-test) to run it")

    echo("   ablation: corrupted test media")
    axes["corruption"] = corruption_cells(job, fits_dir, echo)

    if rep.audio_encoders:
        echo("   ablation: audio encoder swap")
        axes["audio_encoder"] = encoder_cells(job, fits_dir, echo)
    else:
        notes.append("audio_encoder: list alternatives in ablation.audio_encoders to run it")

    result = {"name": job.name, "seeds": list(job.train.seeds), "labels": job.labels, "axes": axes, "notes": notes}
    out = RunFolder(job.run_dir).write(ABLATION, result)
    return {"axes": {k: len(v) for k, v in axes.items()}, "output": str(out)}
