"""The run folder: every artefact a job leaves in ``run_dir``, its path, and how it is read and written.

A run folder is an artefact of its own: copy it, move it, download it from a
cluster, and it predicts from what is inside it. Every stage, ``mer predict``,
``mer serve``, ``mer report`` and ``mer export`` reach its files through this
module, never by spelling a file name, so renaming an output is one edit here.
Paths recorded inside the folder (checkpoints of the final predictor, of the
train stage's systems) are relative to it; a recorded file that is missing is a
one-line error naming it, never a silent fallback to where the run was made.

JSON artefacts carry ``"format": FORMAT``. ``docs/design.md`` lists each
artefact with the module that writes it. Nothing here imports a stage, Ray or
torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mer.errors import MerError

FORMAT = 2

CONFIG = "config.yaml"
STAGES = "stages.json"
QUARANTINE = "quarantine.csv"
CLEAN_MANIFEST = "manifest_clean.csv"
CANDIDATES = "candidates.csv"
CHECKPOINTS = "checkpoints"
RAY_TRAIN = "ray_train"
TRAIN = "train.json"
PREDICTOR = "predictor.json"
SELFTRAIN = "selftrain.json"
SELFTRAIN_DIR = "selftrain"
METRICS = "metrics.json"
ROBUSTNESS = "robustness.json"
ROBUSTNESS_DIR = "robustness"
ABLATION = "ablation.json"
ABLATION_DIR = "ablation"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
TUNE_RESULTS = "tune_results.csv"
TUNE_PLOT = "tune.png"
TUNE_BEST = "best.yaml"
TUNE_DIR = "tune"

#: The final predictor's kinds: the self-training vote, or the train stage's seed ensemble.
VOTE = "self-training vote"
ENSEMBLE = "seed ensemble"
#: Splits the final predictor's predictions are published for.
PUBLISHED_SPLITS = ("test", "unlabeled")


class RunFolderError(MerError):
    """A run folder that lacks, or holds a damaged copy of, an artefact; the message names the file."""


def read_json(path: Path) -> Any:
    """A JSON artefact; RunFolderError naming the file when it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path}: damaged ({' '.join(str(exc).split())})") from None


def write_json(path: Path, data: dict) -> Path:
    """Write ``data`` (with ``format``) atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **data}, indent=2, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return float(value)


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions CSV (``sample_id,label,p_<label>...``), ids as text."""
    try:
        return pd.read_csv(path, dtype={"sample_id": str, "label": str}, keep_default_na=False)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise RunFolderError(f"{path}: damaged ({' '.join(str(exc).split())})") from None


def write_predictions(frame: pd.DataFrame, path: str | Path, decimals: int | None = 6) -> Path:
    """Write a predictions CSV atomically (probabilities with ``decimals`` decimals; None = every digit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, float_format=None if decimals is None else f"%.{decimals}f")
    os.replace(tmp, path)
    return path


@dataclass
class FinalPredictor:
    """Which checkpoints make a run's final predictor and how their probabilities combine.

    Attributes:
        kind: :data:`VOTE` (each model's seeds averaged into one voter, then
            ``mer.voting.final_vote`` with ``selftrain``'s settings and
            ``weights``) or :data:`ENSEMBLE` (mean probability over every model).
        labels: the label set, in probability-column order.
        checkpoints: model name -> checkpoint folders, in ``seeds`` order.
        seeds: the seeds of each model's checkpoints.
        selftrain: the ``selftrain`` settings of the vote (``SelftrainConfig`` fields); None for an ensemble.
        weights: the vote weights (``selftrain.voters: cv``), None = equal votes.
    """

    kind: str
    labels: list[str]
    checkpoints: dict[str, list[Path]]
    seeds: list[int] = field(default_factory=list)
    selftrain: dict | None = None
    weights: dict[str, float] | None = None


class RunFolder:
    """Paths and typed reads/writes of one run folder (``run_dir`` of a job)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- paths of the artefacts others write with their own tools (PNG, CSV appenders, Ray Train) ----------
    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved job (the runner writes it; ``mer run runs/x/config.yaml`` reruns it)."""
        return self.path / CONFIG

    @property
    def quarantine(self) -> Path:
        return self.path / QUARANTINE

    @property
    def clean_manifest(self) -> Path:
        return self.path / CLEAN_MANIFEST

    @property
    def checkpoints(self) -> Path:
        """The fit cache (one folder per fit, ``mer.train.key.fit_name``)."""
        return self.path / CHECKPOINTS

    @property
    def ray_train(self) -> Path:
        """Ray Train's own run storage (per-epoch checkpoints, deleted once a fit is exported)."""
        return self.path / RAY_TRAIN

    def predictions(self, split: str, system: str | None = None) -> Path:
        """``predictions_<split>.csv`` of the final predictor, or ``predictions_<split>_<system>.csv``."""
        return self.path / (f"predictions_{split}.csv" if system is None else f"predictions_{split}_{system}.csv")

    def truth(self, split: str = "test") -> Path:
        return self.path / f"truth_{split}.csv"

    def plot(self, name: str) -> Path:
        """A PNG of the report or the evaluate stage (``confusion_test``, ``waf_per_round`` ...)."""
        return self.path / f"{name}.png"

    def selftrain_round(self, run_id: str, r: int) -> Path:
        """``selftrain/<run_id>/round_<r>/``: one round's ``done.json``, ``pseudo_labels.csv``, test predictions."""
        return self.path / SELFTRAIN_DIR / run_id / f"round_{r}"

    @property
    def babble(self) -> Path:
        """The robustness stage's babble recording."""
        return self.path / ROBUSTNESS_DIR / "babble.wav"

    def variant(self, name: str) -> RunFolder:
        """An ablation variant's own run folder, ``ablation/<name>/``."""
        return RunFolder(self.path / ABLATION_DIR / name)

    @property
    def tune_state(self) -> Path:
        return self.path / TUNE_DIR

    # --- JSON artefacts ----------------------------------------------------------------------------------
    def read(self, name: str) -> dict:
        """A JSON artefact by file name (``train.json``, ``selftrain.json`` ...); RunFolderError when missing."""
        return read_json(self.path / name)

    def read_if_present(self, name: str) -> dict | None:
        """A JSON artefact, or None when the stage that writes it has not run."""
        path = self.path / name
        return read_json(path) if path.exists() else None

    def write(self, name: str, data: dict) -> Path:
        return write_json(self.path / name, data)

    # --- paths recorded inside the folder ---------------------------------------------------------------
    def relative(self, path: str | Path) -> str:
        """``path`` as recorded in the folder's JSON: relative to the folder (``..`` when outside it)."""
        return os.path.relpath(Path(path).absolute(), self.path.absolute())

    def resolve(self, recorded: str, what: str) -> Path:
        """A recorded path, found inside this folder; RunFolderError naming it when it is not there.

        Relative paths (format 2) are read against this folder wherever it now
        lives. An absolute path (format 1 runs) is looked up by its name in
        ``checkpoints/``, never at the place the run was made.
        """
        path = Path(recorded)
        found = self.path / path if not path.is_absolute() else self.checkpoints / path.name
        if not found.exists():
            raise RunFolderError(f"{self.path}: {what} {found} is missing (copy the whole run folder, "
                                 f"or rerun the stage that wrote it)")
        return found

    # --- the final predictor ---------------------------------------------------------------------------
    def publish_final(self, final: FinalPredictor, predictions: dict[str, pd.DataFrame]) -> dict[str, Path]:
        """Make ``final`` the run's predictor: ``predictor.json`` plus ``predictions_<split>.csv`` per split.

        The train stage publishes its seed ensemble; the selftrain stage then
        publishes its vote over the final round's models, which replaces it.
        """
        paths = {split: write_predictions(frame, self.predictions(split)) for split, frame in predictions.items()}
        for split in PUBLISHED_SPLITS:  # a split the new predictor has no rows for must not keep the old one's
            if split not in predictions and self.predictions(split).exists():
                self.predictions(split).unlink()
        self.write(PREDICTOR, {
            "kind": final.kind, "labels": list(final.labels), "seeds": list(final.seeds),
            "checkpoints": {m: [self.relative(p) for p in paths_] for m, paths_ in final.checkpoints.items()},
            "selftrain": final.selftrain, "weights": final.weights,
        })
        return paths

    def final_predictor(self) -> FinalPredictor:
        """The predictor ``mer predict --run``, ``mer serve`` and ``mer export`` use; every checkpoint must be here.

        Raises:
            RunFolderError: no ``predictor.json`` (no train stage ran, or an
                older mer wrote the run), a damaged one, or a missing checkpoint.
        """
        path = self.path / PREDICTOR
        if not path.exists():
            older = (self.path / TRAIN).exists() or (self.path / SELFTRAIN).exists()
            hint = (f"written by an older mer: rerun `mer run {self.config} stages=[train,selftrain]` "
                    "(every fit is reused)" if older else "not a trained run (run the train stage, or pass --checkpoint)")
            raise RunFolderError(f"{self.path}: no {PREDICTOR}: {hint}")
        record = read_json(path)
        try:
            return FinalPredictor(
                kind=record["kind"], labels=list(record["labels"]), seeds=list(record.get("seeds") or []),
                checkpoints={m: [self.resolve(p, f"checkpoint of {m}") for p in paths]
                             for m, paths in record["checkpoints"].items()},
                selftrain=record.get("selftrain"), weights=record.get("weights"),
            )
        except (KeyError, TypeError) as exc:
            raise RunFolderError(f"{path}: damaged (no {exc})") from None

    # --- the challenge candidates ------------------------------------------------------------------------
    def write_candidates(self, frame: pd.DataFrame) -> Path:
        """``candidates.csv``: ``sample_id, reason`` of every candidate row of the manifest ("" = usable)."""
        path = self.path / CANDIDATES
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[["sample_id", "reason"]].to_csv(path, index=False)
        return path

    def candidates(self) -> pd.DataFrame:
        """The manifest's candidate rows (``sample_id, reason``), in manifest order; empty when none are marked."""
        path = self.path / CANDIDATES
        if not path.exists():
            return pd.DataFrame(columns=["sample_id", "reason"])
        return pd.read_csv(path, dtype=str, keep_default_na=False)

    def published(self, default: str) -> str:
        """The system the train stage published (``train.json``'s ``published``; ``default`` before it ran)."""
        return (self.read_if_present(TRAIN) or {}).get("published", default)

    def systems(self) -> dict:
        """``train.json``'s systems (model -> checkpoints resolved, CV summary)."""
        record = self.read(TRAIN)
        return {name: {**system, "checkpoints": [self.resolve(c, f"checkpoint of {name}") for c in system["checkpoints"]]}
                for name, system in record["systems"].items()}
