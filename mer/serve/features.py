"""The run's own encoders over new rows, into the model input the stored pipeline builds.

Extraction writes a clip's pooled ``vector`` (float32) and its ``seq`` (at most
``seq_len`` steps, in ``seq_dtype``) to the store; training and prediction read
them back, crop or zero-pad ``seq`` to the checkpoint's ``seq_len`` and mark
absent modalities. :func:`clip_data` builds the same
:class:`mer.train.data.MultiModalData` from features held in memory, so a clip
predicted from its media file gets the probabilities it gets from the store.
"""

from __future__ import annotations

import numpy as np

from mer.config import role_of
from mer.encoders import Encoder
from mer.train.data import ArraySource, MultiModalData, ReadPlan, RoleData, RoleTable

#: One role's features of one row: ``(vector (D,), seq (L, D) or None)``, or None when absent.
Feature = tuple[np.ndarray, np.ndarray | None] | None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _encode_each(encoder: Encoder, payloads: list) -> list:
    """Encode a batch; if it fails, one by one, so only the payloads that fail carry their exception."""
    try:
        return list(encoder.encode(payloads))
    except Exception:  # find the bad payload(s); the others still encode
        results = []
        for payload in payloads:
            try:
                results.extend(encoder.encode([payload]))
            except Exception as exc:
                results.append(exc)
        return results


def encode_rows(encoders: dict[str, Encoder], rows: list[dict]) -> tuple[dict[str, list[Feature]], dict[int, str]]:
    """Decode (``prepare``) and embed (``encode``) every role a row has (``has_<role>``).

    Args:
        encoders: role -> loaded encoder.
        rows: checked rows (``mer.serve.clips.check_row``).

    Returns:
        ``(features, errors)``: per role one :data:`Feature` per row, and
        row index -> one-line problem for rows a role could not decode or encode.
    """
    features = {role: [None] * len(rows) for role in encoders}
    errors: dict[int, str] = {}
    for role, encoder in encoders.items():
        wanted = [i for i, row in enumerate(rows) if row.get(f"has_{role_of(role)}")]
        for i, (vector, seq) in _run(encoder, rows, wanted, errors, role).items():
            features[role][i] = (np.asarray(vector, np.float32), None if seq is None else np.asarray(seq))
    return features, errors


def _run(worker, rows: list[dict], wanted: list[int], errors: dict[int, str], name: str) -> dict:
    """``prepare`` then ``encode`` the wanted rows not yet in ``errors``; row index -> result, failures into ``errors``."""
    payloads = {}
    for i in wanted:
        if i in errors:
            continue
        try:
            payloads[i] = worker.prepare(rows[i])
        except Exception as exc:  # one bad clip never fails the others
            errors[i] = f"{rows[i]['sample_id']}: decode {name}: {_one_line(exc)}"
    results = {}
    for i, result in zip(payloads, _encode_each(worker, list(payloads.values()))):
        if isinstance(result, Exception):
            errors[i] = f"{rows[i]['sample_id']}: encode {name}: {_one_line(result)}"
        else:
            results[i] = result
    return results


def transcribe_rows(transcriber, rows: list[dict], errors: dict[int, str]) -> list[tuple[str, str]]:
    """Give rows with audio and no text the recogniser's transcript (in place); ``(text_source, transcript)`` per row.

    ``text_source`` is ``input`` for a row that came with text, the recogniser's
    label (``asr:<engine>:<model>@<version8>``) for a transcribed one (its
    ``transcript`` empty when no speech was found: the row keeps no text), ""
    otherwise. A clip the recogniser fails on gets its one-line problem in ``errors``.
    """
    sources = [("input", "") if row.get("has_text") else ("", "") for row in rows]
    if transcriber is None:
        return sources
    wanted = [i for i, row in enumerate(rows) if row.get("has_audio") and not row.get("has_text")]
    for i, result in _run(transcriber, rows, wanted, errors, "asr").items():
        sources[i] = (transcriber.label, result.text)
        if result.text:
            rows[i] = {**rows[i], "text": result.text, "has_text": True}
    return sources


def _padded(seqs: list[np.ndarray | None], seq_len: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop or zero-pad each (L_i, D) sequence to (seq_len, D) float32, with its step mask."""
    out = np.zeros((len(seqs), seq_len, dim), np.float32)
    mask = np.zeros((len(seqs), seq_len), bool)
    for i, seq in enumerate(seqs):
        keep = 0 if seq is None else min(seq_len, len(seq))
        out[i, :keep], mask[i, :keep] = seq[:keep], True
    return out, mask


def clip_data(ids: list[str], features: dict[str, list[Feature]], tables: dict[str, RoleTable]) -> MultiModalData:
    """Model input for rows whose features are in memory, shaped by a checkpoint's tables.

    Args:
        ids: sample id per row.
        features: role -> one :data:`Feature` per row (``encode_rows``).
        tables: the checkpoint's role tables (``dim``, ``seq_len``).
    """
    roles = {}
    for role, table in tables.items():
        items = features[role]
        present = np.array([f is not None for f in items], bool)
        rows = np.where(present, np.cumsum(present) - 1, -1)
        kept = [f for f in items if f is not None]
        vector = np.stack([v for v, _ in kept]) if kept else np.zeros((0, table.dim), np.float32)
        seq = _padded([s for _, s in kept], table.seq_len, table.dim) if table.seq_len else (None, None)
        roles[role] = RoleData(table, ArraySource(vector, *seq), rows)
    n = len(ids)
    return MultiModalData(
        ids=np.asarray(ids, dtype=str), split=np.full(n, "new"), label=np.full(n, None, object),
        roles=roles, plan=ReadPlan("", dict(tables), False, 0.0),
    )


def store_rows(store_uri: str, encoders: dict[str, Encoder], rows: list[dict],
               features: dict[str, list[Feature]]) -> int:
    """Upsert the rows' features into the store, one table per encoder version, as extraction does.

    Samples already stored are left as they are (extraction's resume rule), so
    a new clip never overwrites a training row that has its id. A row's split
    is its manifest split, else ``unlabeled``.

    Returns:
        Rows written, over every role.
    """
    from mer.store import open_store

    store = open_store(store_uri)
    written = 0
    for role, encoder in encoders.items():
        kept = [(row, f) for row, f in zip(rows, features[role]) if f is not None]
        if not kept:
            continue
        columns = {
            "sample_id": [str(row["sample_id"]) for row, _ in kept],
            "split": [row.get("split") or "unlabeled" for row, _ in kept],
            "label": [row.get("label") for row, _ in kept],
            "vector": np.stack([v for _, (v, _) in kept]),
        }
        if all(s is not None for _, (_, s) in kept):
            columns["seq"] = [s for _, (_, s) in kept]
        written += store.upsert(encoder.alias, encoder.version, columns, skip_existing=True,
                                seq_dtype=encoder.spec.seq_dtype)
    return written
