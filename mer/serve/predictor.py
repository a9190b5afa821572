"""A trained run as one object: its encoders and models loaded once, predicting new clips.

``Predictor.from_run(run_dir)`` loads the run's final predictor (the run
folder's ``predictor.json``, :meth:`mer.runfolder.RunFolder.final_predictor`:
the self-training vote of the final round's models, else the train stage's seed
ensemble) and the encoders its checkpoints were trained on,
refusing to start when an encoder here is not the version the checkpoints
recorded (changed weights or settings would feed the models features they
never saw). ``predict_rows(rows)`` decodes and encodes the rows with the same
code as extraction, builds the model input the stored pipeline builds
(:mod:`mer.serve.features`) and predicts with the same function
(``mer.train.learner.predict_proba``), so a clip gets the probabilities it gets
from the store. ``mer predict --run`` and ``mer serve`` both call it. No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mer.config import ROLES, AsrSpec, EncoderSpec, SelftrainConfig, role_of
from mer.encoders import Encoder, build_encoder, encoder_class
from mer.encoders.asr import Transcriber, build_transcriber
from mer.encoders.versions import asr_version
from mer.errors import MerError
from mer.runfolder import ENSEMBLE, VOTE, FinalPredictor, RunFolder
from mer.serve.clips import check_row, file_rows, manifest_rows
from mer.serve.features import clip_data, encode_rows, store_rows, transcribe_rows
from mer.train.checkpoint import load_models
from mer.train.data import MultiModalData, RoleTable
from mer.train.learner import predict_proba, to_device
from mer.voting import average_seeds, final_vote, prob_columns

BATCH = 256


@dataclass
class Member:
    """One checkpoint of the predictor: its folder, config, role tables and models (one per fold)."""

    model: str
    path: Path
    config: dict
    tables: dict[str, RoleTable]
    models: list[nn.Module]


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_member(model: str, path: Path, device: str) -> Member:
    config, models = load_models(path)
    try:
        tables = {role: RoleTable(**t) for role, t in config["read"]["tables"].items()}
    except (KeyError, TypeError) as exc:
        raise MerError(f"{path}: config.json does not record the store tables it read ({exc})") from None
    return Member(model, Path(path), config, tables, [m.to(device) for m in models])


def _encoders(members: list[Member], device: str) -> dict[str, Encoder]:
    """One encoder per stream, checked against the version every checkpoint recorded.

    Raises:
        MerError: a checkpoint records no encoder for a stream, checkpoints
            disagree, a stream's features were imported (no encoder to run on
            media), or the encoder here computes another version.
    """
    encoders: dict[str, Encoder] = {}
    for member in members:
        for role, table in member.tables.items():
            spec = member.config.get("encoders", {}).get(role)
            if not spec or not table.encoder_version:
                raise MerError(f"{member.path}: config.json records no encoder version for '{role}'")
            if role not in encoders:
                try:
                    spec = EncoderSpec(**spec)
                except TypeError as exc:  # a spec written by another mer version
                    raise MerError(f"{member.path}: the {role} encoder spec is not one this mer reads ({exc})") from None
                if not encoder_class(spec.alias).extracts:
                    raise MerError(f"{member.path}: '{role}' reads features imported into the store "
                                   f"({spec.model}); new clips need an encoder that runs on media")
                encoders[role] = build_encoder(spec, device)
            encoder = encoders[role]
            if encoder.version != table.encoder_version or encoder.alias != table.alias:
                raise MerError(
                    f"{member.path}: trained on {role} encoder {table.alias}@{table.encoder_version[:8]}, "
                    f"but {encoder.alias} here is version {encoder.version[:8]} (weights or settings changed): "
                    "restore them, or re-extract and retrain"
                )
    return {s: encoders[s] for s in sorted(encoders, key=lambda s: (ROLES.index(role_of(s)), s))}


def _recogniser(text: Encoder | None, asr: AsrSpec | None, device: str) -> tuple[Transcriber | None, str]:
    """The recogniser for clips that come without text, and the warning its use deserves ("" = none).

    A run whose text features came from a recogniser (``source: asr|auto``)
    transcribes with that one; a run trained on manifest transcripts uses
    ``asr`` (``--asr``), else its spec's ``asr``, else none (text absent), and
    warns that ASR text is a shift from what it was trained on.
    """
    if text is None:
        if asr is not None:
            raise MerError("the run has no text encoder: a transcript would feed nothing (drop --asr)")
        return None, ""
    if text.spec.source != "manifest":
        own = build_transcriber(text.spec.recogniser(), device)
        if asr is not None and asr_version(asr) != own.version:
            raise MerError(f"the run's text features come from {own.label}; --asr names another "
                           "recogniser (drop --asr)")
        return own, ""
    asr = asr or text.spec.asr
    if asr is None:
        return None, ""
    transcriber = build_transcriber(asr, device)
    return transcriber, (
        f"warning: the run's text model was trained on manifest transcripts; clips without text are transcribed "
        f"by {transcriber.label}, a shift its scores were not measured on")


def amf_weights(model: nn.Module, data: MultiModalData, batch_size: int = BATCH) -> dict[str, np.ndarray]:
    """AMF modality weights of an AGT checkpoint's model (behind its standardiser), role -> (N,); N >= 1."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(data), batch_size):
        batch = to_device(data.batch(np.arange(start, min(start + batch_size, len(data)))), device)
        parts.append({r: w.cpu().numpy() for r, w in model.model.modality_weights(model.scale(batch)).items()})
    return {role: np.concatenate([p[role] for p in parts]) for role in parts[0]}


class Predictor:
    """Encoders plus the models of a final predictor, loaded once.

    Args:
        final: the checkpoints and how they combine (:mod:`mer.serve.final`).
        run_dir: the run folder they come from (for the model id), if any.
        device: ``cpu`` or ``cuda`` (default: cuda when there is one).
        asr: the recogniser for clips without text when the run has none of its own (see ``_recogniser``).

    Attributes:
        labels: the label set, in probability-column order.
        encoders: role -> loaded encoder (the versions the checkpoints recorded).
        members: every checkpoint, grouped by model name.
        transcriber: the recogniser of clips without text (None: their text is absent).
        shift_warning: one line to show once when that recogniser is not the one the run was trained with.
    """

    def __init__(self, final: FinalPredictor, run_dir: str | Path | None = None, device: str | None = None,
                 asr: AsrSpec | None = None):
        device = _device(device)
        self.final = final
        self.run_dir = None if run_dir is None else str(Path(run_dir).absolute())
        self.members = [_load_member(model, path, device)
                        for model, paths in final.checkpoints.items() for path in paths]
        if not self.members:
            raise MerError(f"{run_dir or 'predictor'}: no checkpoint to predict with")
        labels = {tuple(m.config["labels"]) for m in self.members}
        if len(labels) > 1:
            raise MerError("the checkpoints have different label sets: predict them separately")
        self.labels = list(labels.pop())
        self.encoders = _encoders(self.members, device)
        for encoder in self.encoders.values():
            encoder.ensure_loaded()
        text = next((e for s, e in self.encoders.items() if role_of(s) == "text"), None)
        self.transcriber, self.shift_warning = _recogniser(text, asr, device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None, asr: AsrSpec | None = None) -> Predictor:
        """The run's final predictor: the self-training vote, else the train stage's seed ensemble."""
        return cls(RunFolder(run_dir).final_predictor(), run_dir, device, asr)

    @classmethod
    def from_checkpoints(cls, checkpoints: list[str | Path], device: str | None = None,
                         asr: AsrSpec | None = None) -> Predictor:
        """A seed ensemble of the given checkpoint folders (mean probability over every model)."""
        return cls(FinalPredictor(ENSEMBLE, [], {"--checkpoint": [Path(c) for c in checkpoints]}), None, device, asr)

    @property
    def weight_roles(self) -> list[str]:
        """Streams with an AMF weight column (the AGT checkpoints' streams); empty without AGT."""
        agt = {r for m in self.members if m.config["model"] == "agt" for r in m.tables}
        return [s for s in self.encoders if s in agt]

    @property
    def model_id(self) -> str:
        """``<run dir>:<checkpoint folder names>`` (or the folders alone without a run)."""
        keys = ",".join(m.path.name for m in self.members)
        return f"{self.run_dir}:{keys}" if self.run_dir else keys

    def describe(self) -> dict:
        """Run, predictor kind, checkpoints, labels and encoders with their versions (``GET /model``)."""
        return {
            "run": self.run_dir,
            "predictor": self.final.kind,
            "model_id": self.model_id,
            "checkpoints": {m.path.name: {"model": m.config["model"], "seed": m.config.get("seed")}
                            for m in self.members},
            "labels": self.labels,
            "encoders": {r: {"alias": e.alias, "version": e.version, "dim": e.dim} for r, e in self.encoders.items()},
            "asr": self.transcriber.label if self.transcriber else None,
        }

    def versions(self) -> dict[str, str]:
        """Role -> encoder version used."""
        return {role: e.version for role, e in self.encoders.items()}

    def predict_rows(self, rows: list[dict], store: str | None = None) -> pd.DataFrame:
        """Predict manifest-style rows (``sample_id``, ``video``/``audio`` paths, ``text``).

        Rows without ``has_<role>`` flags are checked first
        (:func:`mer.serve.clips.check_row`); a row with audio and no text is
        transcribed when the predictor has a recogniser. A row that cannot be used gets
        its one-line problem in ``error`` and no probabilities; the others are
        predicted all the same.

        Args:
            rows: the rows, in output order.
            store: when given, upsert the new rows' features there (ids already
                stored are left alone).

        Returns:
            ``sample_id,label,p_<label>...``, ``w_<role>`` (AMF weights averaged
            over the AGT models, when there are any), ``path`` (what answered:
            ``vote:prior``, ``vote:majority``, ``vote:soft``, ``vote:mean`` where no
            model was confident, or ``ensemble:mean``), ``votes`` (the confident
            ``model:label`` votes), ``inputs`` (the roles the clip had, e.g.
            ``video+text`` for a clip without audio), ``text_source`` and
            ``transcript`` (see :func:`mer.serve.features.transcribe_rows`) and
            ``error`` ("" when predicted), one row per input row.
        """
        errors: dict[int, str] = {}
        checked = []
        for i, row in enumerate(rows):
            try:
                checked.append(row if "has_audio" in row else check_row(row))
            except MerError as exc:
                errors[i] = str(exc)
                checked.append(row)
        # a row that failed its check has no has_<role> flag, so no encoder touches it
        texts = transcribe_rows(self.transcriber, checked, errors)
        features, failed = encode_rows(self.encoders, checked)
        errors.update(failed)
        good = [i for i in range(len(rows)) if i not in errors]
        kept = {role: [f[i] for i in good] for role, f in features.items()}
        if store and good:
            store_rows(store, self.encoders, [checked[i] for i in good], kept)
        columns = ["label", *prob_columns(self.labels), *(f"w_{r}" for r in self.weight_roles), "path", "votes"]
        frame = self._predict(len(good), kept) if good else pd.DataFrame(columns=columns)
        out = pd.DataFrame({"sample_id": [str(r.get("sample_id", "")) for r in rows]})
        out = out.join(frame[columns].set_index(pd.Index(good)))
        out["inputs"] = ["+".join(r for r in ROLES if row.get(f"has_{r}")) for row in checked]
        out["text_source"], out["transcript"] = [t[0] for t in texts], [t[1] for t in texts]
        out["error"] = [errors.get(i, "") for i in range(len(rows))]
        return out

    def _predict(self, n: int, features: dict[str, list]) -> pd.DataFrame:
        """Label, probabilities and AMF weights of ``n`` (>= 1) usable rows, in their order."""
        ids = [str(i) for i in range(n)]  # positional: uploads may share a file name
        index = np.arange(n)
        groups: dict[str, list[tuple[Path, int, np.ndarray]]] = {}
        every_model, weights = [], []
        for member in self.members:
            data = clip_data(ids, features, member.tables)
            probs = [predict_proba(model, data, index, BATCH) for model in member.models]
            every_model += probs
            groups.setdefault(member.model, []).append((member.path, member.config.get("seed"), np.mean(probs, 0)))
            if member.config["model"] == "agt":
                weights += [amf_weights(model, data) for model in member.models]
        if self.final.kind == VOTE:
            frame = self._vote(ids, groups)
        else:
            mean = np.mean(every_model, 0)
            frame = pd.DataFrame(mean, columns=prob_columns(self.labels))
            frame["label"] = np.asarray(self.labels, object)[mean.argmax(1)]
            frame["path"], frame["votes"] = "ensemble:mean", ""
        for role in self.weight_roles:
            frame[f"w_{role}"] = np.mean([w[role] for w in weights], 0)
        return frame.reset_index(drop=True)


    def _vote(self, ids: list[str], groups: dict[str, list[tuple[Path, int, np.ndarray]]]) -> pd.DataFrame:
        """The self-training vote over new samples, as the run voted its test split (same settings and weights)."""
        cols = prob_columns(self.labels)
        tables = {model: average_seeds([pd.DataFrame(p, columns=cols).assign(sample_id=ids) for _, _, p in items],
                                       self.labels) for model, items in groups.items()}
        voted = final_vote(tables, self.labels, SelftrainConfig(**self.final.selftrain), self.final.weights,
                           paths=True)
        return voted.set_index("sample_id").loc[ids].reset_index()


def records(frame: pd.DataFrame) -> list[dict]:
    """Predicted rows as JSON-able dicts: label, probabilities, modality weights and the path that answered."""
    out = []
    for row in frame.to_dict("records"):
        probs = {c[2:]: float(v) for c, v in row.items() if c.startswith("p_")}
        weights = {c[2:]: float(v) for c, v in row.items() if c.startswith("w_")}
        out.append({"sample_id": row["sample_id"], "label": row["label"], "probabilities": probs,
                    "modality_weights": weights or None, "path": row["path"], "votes": row["votes"] or None,
                    "inputs": row["inputs"].split("+") if row["inputs"] else [],
                    "text_source": row["text_source"] or None,
                    "transcript": row["transcript"] if row["text_source"].startswith("asr:") else None})
    return out


def load_predictor(run_dir: str | Path | None, checkpoints: list[str] | tuple[str, ...] = (),
                   device: str | None = None, asr: AsrSpec | None = None) -> Predictor:
    """``checkpoints``' seed ensemble when given, else the run's final predictor.

    Raises:
        MerError: neither is given.
    """
    if checkpoints:
        return Predictor.from_checkpoints(list(checkpoints), device, asr)
    if not run_dir:
        raise MerError("give --run RUN_DIR (the run's final predictor) or --checkpoint DIR")
    return Predictor.from_run(run_dir, device, asr)


def predict_clips(predictor: Predictor, clips: list[str], texts: list[str], manifest: str | None = None,
                  store: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``mer predict --run``: clip files and/or a manifest's rows, predicted.

    Returns:
        ``(predictions, problems)``: the predicted rows (``sample_id,label,p_<label>...``
        plus ``w_<role>``, ``text_source``, ``transcript``), and one line per file or row that could not be used.
    """
    rows, problems = file_rows(list(clips), list(texts))
    if manifest:
        more, bad = manifest_rows(manifest, predictor.labels)
        rows, problems = rows + more, problems + bad
    frame = predictor.predict_rows(rows, store=store)
    failed = frame["error"] != ""
    problems += frame.loc[failed, "error"].tolist()
    return frame[~failed].drop(columns="error").reset_index(drop=True), problems
