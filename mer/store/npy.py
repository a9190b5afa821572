"""Features made elsewhere: MERTools' per-sample ``.npy`` folders in and out of the store.

MERTools (the organisers' toolkit) saves one file per clip, ``<folder>/<name>.npy``:
utterance level ``(D,)`` (its ``-UTT`` folders) or frame level ``(T, D)``
(``-FRA``). :func:`import_folder` reads such a folder into a table of its own,
``features__<name>__<version8>``: ``vector`` is the file (utterance level) or
its mean over time (frame level, as MERTools' ``align_to_utt`` pools), ``seq``
the frames as ``seq_len`` segment means. The version hashes every file's name
and bytes plus ``seq_len``, so the same folder imports to the same table and a
changed file makes a new one. Split and label come from the manifest (the
training join reads them from the tables). A file that is missing from the
manifest, not a numpy array, of another width or of another rank is reported
by name and skipped; the rest is imported, idempotently (a rerun adds nothing).
:func:`export_folder` writes a table back in the same layout. No Ray here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mer.store.errors import StoreError
from mer.store.schema import sql_string

WRITE_BATCH = 1024


@dataclass
class ImportSummary:
    """What :func:`import_folder` did: the table, rows written or already there, and the files refused."""

    table: str
    alias: str
    version: str
    dim: int
    files: int = 0
    written: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str:
        """How a job names the table: ``encoders.<role>: {alias: imported, model: <reference>}``."""
        return f"{self.alias}@{self.version[:8]}"


def _files(folder: Path) -> list[Path]:
    """The folder's ``*.npy`` files, sorted by name (one directory scan)."""
    if not folder.is_dir():
        raise StoreError(f"{folder}: no such folder of .npy features")
    with os.scandir(folder) as entries:
        files = sorted(Path(e.path) for e in entries if e.is_file() and e.name.endswith(".npy"))
    if not files:
        raise StoreError(f"{folder}: no .npy files (MERTools writes one <name>.npy per clip)")
    return files


def folder_version(files: list[Path], seq_len: int) -> str:
    """sha256 of every file's name and bytes, and ``seq_len``: the imported table's version (16 hex digits)."""
    digest = hashlib.sha256(f"npy-import:1:seq_len={seq_len}".encode())
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _load(path: Path) -> np.ndarray:
    """One file as float32 (1-d or 2-d); ValueError saying why it is not one."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError or UnpicklingError by what the file holds
        raise ValueError(f"not a numpy array ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"not a numeric array (dtype {getattr(array, 'dtype', type(array).__name__)})")
    array = np.squeeze(array)  # MERTools' loader squeezes too: (1, D) is utterance level
    if array.ndim not in (1, 2) or array.shape[-1] == 0 or (array.ndim == 2 and array.shape[0] == 0):
        raise ValueError(f"shape {array.shape}: expected (D,) or (T, D)")
    if not np.isfinite(array).all():
        raise ValueError("holds NaN or infinite values")
    return array.astype(np.float32)


def import_folder(store, name: str, folder: str | os.PathLike, manifest: pd.DataFrame, seq_len: int = 16,
                  progress: bool = True) -> ImportSummary:
    """Read a folder of per-sample ``.npy`` files into the table ``features__<name>__<version8>``.

    Args:
        store: an open :class:`mer.store.FeatureStore`.
        name: the feature set's name (the table's alias), e.g. ``chinese-hubert-large``.
        folder: the MERTools feature folder (``<name>.npy`` per clip).
        manifest: ``sample_id, split, label`` of the corpus (:func:`mer.corpus.manifest.read_manifest`).
        seq_len: frame-level files keep this many segment means as ``seq`` (0 = none).
        progress: show a progress bar.

    Raises:
        StoreError: no folder, no ``.npy`` file, or no file could be imported.
    """
    from tqdm import tqdm

    from mer.encoders.base import segment_means
    from mer.store.schema import table_name

    files = _files(Path(folder))
    version = folder_version(files, seq_len)
    index = manifest.set_index("sample_id")[["split", "label"]]
    done = store.existing_ids(name, version)
    summary = ImportSummary(table_name(name, version), name, version, 0, files=len(files))
    if done:
        summary.dim = store.describe_table(summary.table)["dim"]
    buffer: list[tuple[str, np.ndarray, np.ndarray | None]] = []

    def flush() -> None:
        if not buffer:
            return
        ids = [sid for sid, _, _ in buffer]
        rows = {"sample_id": ids, "split": index.loc[ids, "split"].tolist(), "label": index.loc[ids, "label"].tolist(),
                "vector": np.stack([v for _, v, _ in buffer])}
        if seq_len:
            rows["seq"] = [s for _, _, s in buffer]
        summary.written += store.upsert(name, version, rows, skip_existing=True)
        buffer.clear()

    for path in tqdm(files, desc=f"import {name}", unit="file", disable=not progress or len(files) < 1000):
        sid = path.stem
        if sid in done:
            summary.skipped += 1
            continue
        if sid not in index.index:
            summary.problems.append(f"{path}: sample {sid!r} is not in the manifest")
            continue
        try:
            array = _load(path)
        except ValueError as exc:
            summary.problems.append(f"{path}: {exc}")
            continue
        width = array.shape[-1]
        if not summary.dim:
            summary.dim = width
        if width != summary.dim:
            summary.problems.append(f"{path}: width {width}, the folder's others have {summary.dim}")
            continue
        frames = array[None, :] if array.ndim == 1 else array
        buffer.append((sid, frames.mean(axis=0), segment_means(frames, seq_len) if seq_len else None))
        if len(buffer) >= WRITE_BATCH:
            flush()
    flush()
    if not summary.written and not summary.skipped:
        raise StoreError(f"{folder}: no file could be imported ({len(summary.problems)} refused; first: "
                         f"{summary.problems[0] if summary.problems else 'none'})")
    return summary


def export_folder(store, encoder: str, out: str | os.PathLike, frames: bool = False, split: str | None = None) -> int:
    """Write one table as MERTools' layout: ``<out>/<sample_id>.npy``, ``(D,)`` or with ``frames`` ``(T, D)``.

    Returns:
        Files written.

    Raises:
        StoreError: ``frames`` asked of a table without ``seq``, or ``out`` is a file.
    """
    tbl = store.open_table(encoder)
    if frames and "seq" not in tbl.schema.names:
        raise StoreError(f"{tbl.name} has no seq column: export utterance-level files (no --frames)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: is a file; name a folder for the .npy files")
    out.mkdir(parents=True, exist_ok=True)
    from mer.store.arrays import seq_from_arrow, vectors_from_arrow

    columns = ["sample_id", "seq" if frames else "vector"]
    written = 0
    with store.readable(tbl.name):
        for batch in tbl.to_lance().to_batches(columns=columns, filter=None if split is None else f"split = {sql_string(split)}"):
            ids = batch.column("sample_id").to_pylist()
            if frames:
                seq, mask = seq_from_arrow(batch.column("seq"))
                arrays = [seq[i][mask[i]].astype(np.float32) for i in range(len(ids))]
            else:
                arrays = list(vectors_from_arrow(batch.column("vector")))
            for sid, array in zip(ids, arrays):
                np.save(out / f"{sid}.npy", array)
            written += len(ids)
    return written
