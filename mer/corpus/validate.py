"""Manifest validation and the quarantine file.

A bad row never stops a run: it goes to ``quarantine.csv`` with its reason and
the run goes on with the clean rows. Checks per row, first failure wins:
missing sample_id, duplicate sample_id (the first occurrence is kept), unknown
split, unknown label, labeled split (train/test) without label, a referenced
media file that is missing, empty or does not decode (``media.check_media``:
header probe plus a packet walk, which catches truncated mp4s without a full
decode), and finally a row with no usable modality (empty text counts as no
text). Our choice: a row whose referenced file is broken is quarantined whole,
even if another modality would be usable, because a broken reference is a data
error the owner should see; a label on an ``unlabeled`` row is dropped so no
later stage can train on it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mer.corpus.manifest import SPLITS, read_manifest_chunks
from mer.corpus.names import NameIndex
from mer.corpus.media import EmptyMediaError, MediaError, MediaInfo, MissingMediaError, check_media

QUARANTINE_FILE = "quarantine.csv"
QUARANTINE_COLUMNS = ["sample_id", "row", "reason", "stage"]
LABELED_SPLITS = ("train", "test")
#: Values of the optional ``candidate`` column (challenge clips to predict): true, false.
CANDIDATE_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}
MIN_SECONDS = 0.05
CHECK_CHUNK = 256  # media checks in flight at once
MODALITIES = ("audio", "video", "text")


@dataclass
class Validation:
    """Result of ``validate_manifest``.

    Attributes:
        manifest: the manifest path.
        clean: usable rows (manifest columns plus ``has_audio``, ``has_video``,
            ``has_text``); None when they were written to a file as they came.
        quarantine: rejected rows: ``sample_id, row, reason``.
        labels: the label set checked against.
        candidates: ``sample_id, reason`` of every row marked ``candidate``, in
            manifest order (reason "" for a usable row, else why it was quarantined).
        counts: usable rows per split: ``rows``, one column per label, and the
            rows with ``audio``, ``video`` and ``text``.
    """

    manifest: str
    clean: pd.DataFrame | None
    quarantine: pd.DataFrame
    labels: list[str] = field(default_factory=list)
    candidates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sample_id", "reason"]))
    counts: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def usable(self) -> int:
        """How many rows are clean."""
        return int(self.counts["rows"].sum()) if len(self.counts) else 0

    def write_quarantine(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/quarantine.csv`` (rows of other stages already there are kept)."""
        rows = self.quarantine.assign(stage="validate")
        path = Path(directory) / QUARANTINE_FILE
        old = _read_quarantine(path)
        old = old[old["stage"] != "validate"]
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat([rows, old], ignore_index=True)[QUARANTINE_COLUMNS].to_csv(path, index=False)
        return path

    def summary_table(self) -> str:
        """Rows per split and label, and per modality present, as a fixed-width text table."""
        if not self.usable:
            return "no usable rows"
        table = self.counts.copy()
        labels = [c for c in table.columns if c not in ("rows", *MODALITIES)]
        known = [lab for lab in self.labels if lab in labels]
        table = table[["rows", *known, *[c for c in labels if c not in known], *MODALITIES]]
        table = table.reindex([s for s in SPLITS if s in table.index])
        table.loc["total"] = table.sum()
        table.index.name, table.columns.name = "split", None
        text = table.to_string()
        if not self.quarantine.empty:
            reasons = self.quarantine["reason"].str.split(":").str[0].value_counts()
            text += "\nquarantined: " + ", ".join(f"{r} ({n})" for r, n in reasons.items())
        return text


def _read_quarantine(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return df.reindex(columns=QUARANTINE_COLUMNS, fill_value="")


def append_quarantine(run_dir: str | os.PathLike, rows: list[dict]) -> Path:
    """Add rows (``sample_id``, ``reason``, ``stage``; ``row`` optional) to ``run_dir/quarantine.csv``.

    For later stages (extraction failures). A row already present with the same
    sample_id, stage and reason is not added again, so retries and reruns do not
    pile up duplicates.
    """
    path = Path(run_dir) / QUARANTINE_FILE
    old = _read_quarantine(path)
    text = [{c: "" if r.get(c) is None else str(r[c]) for c in QUARANTINE_COLUMNS} for r in rows]
    new = pd.DataFrame(text, columns=QUARANTINE_COLUMNS)
    new["reason"] = [" ".join(r.split()) for r in new["reason"]]  # one line per reason
    both = pd.concat([old.astype(str), new], ignore_index=True)
    both = both.drop_duplicates(subset=["sample_id", "stage", "reason"], keep="first")
    path.parent.mkdir(parents=True, exist_ok=True)
    both.to_csv(path, index=False)
    return path


def _media_check(path: str | None, decode: bool) -> tuple[MediaInfo | None, str | None]:
    """``(info, problem)`` for one referenced file; ``problem`` is None when it is usable."""
    if path is None:
        return None, None
    try:
        info = check_media(path) if decode else _exists(path)
    except MediaError as exc:
        return None, exc.problem
    if info is not None and decode and info.duration < MIN_SECONDS:
        return None, f"too short ({info.duration:.3f} s)"
    return info, None


def _exists(path: str) -> None:
    """Existence and size only (``check_media=False``)."""
    p = Path(path)
    if not p.is_file():
        raise MissingMediaError(p, "file not found")
    if p.stat().st_size == 0:
        raise EmptyMediaError(p, "file is empty (0 bytes)")


def validate_manifest(
    path: str | os.PathLike, labels: list[str], check_media: bool = True, workers: int = 4,
    clean_out: str | os.PathLike | None = None, keep_clean: bool = True,
) -> Validation:
    """Validate a manifest; split its rows into clean and quarantined.

    The manifest is read and checked ``CHUNK_ROWS`` rows at a time. With
    ``keep_clean=False`` memory holds one chunk, the ids seen (``NameIndex``)
    and the quarantined rows, whatever the manifest's size.

    Args:
        path: manifest (CSV or JSONL).
        labels: allowed labels.
        check_media: probe and packet-walk every referenced file (else only existence and size).
        workers: threads checking media (FFmpeg releases the GIL while reading).
        clean_out: write the clean rows to this CSV as they come (complete or absent).
        keep_clean: return the clean rows (else ``Validation.clean`` is None).

    Returns:
        A ``Validation``.

    Raises:
        ManifestError: the file is not a manifest.
    """
    seen, parts, columns = NameIndex(pa.int64()), [], None  # sample_id -> its first line
    out = Path(clean_out) if clean_out else None
    tmp = out.with_name(f".{out.name}.tmp") if out else None
    try:
        with open(tmp, "w", newline="", encoding="utf-8") if tmp else nullcontext() as f:
            for chunk in read_manifest_chunks(path):
                part = _validate_chunk(chunk, set(labels), seen, check_media, workers)
                if f is not None:  # JSONL chunks may differ in their extra keys: the first chunk's columns
                    columns = list(part.clean.columns) if columns is None else columns
                    part.clean.reindex(columns=columns).to_csv(f, header=not parts, index=False, lineterminator="\n")
                if not keep_clean:
                    part.clean = None
                parts.append(part)
        if tmp:
            os.replace(tmp, out)
    finally:
        if tmp:
            tmp.unlink(missing_ok=True)

    def joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    counts = pd.concat([p.counts for p in parts]).fillna(0).groupby(level=0, sort=False).sum().astype(int)
    return Validation(
        manifest=str(path), clean=joined([p.clean for p in parts]) if keep_clean else None,
        quarantine=joined([p.quarantine for p in parts]), labels=list(labels),
        candidates=joined([p.candidates for p in parts]), counts=counts,
    )


def _validate_chunk(df: pd.DataFrame, label_set: set[str], seen: NameIndex, check_media: bool,
                    workers: int) -> Validation:
    """One chunk of ``read_manifest_chunks``: its clean rows, quarantine, candidates and counts."""
    first_row = df.attrs["first_row"]
    reasons: dict[int, str] = {}
    earlier = seen.get(list(df["sample_id"])).fill_null(0).to_numpy()  # first line in an earlier chunk
    here: dict[str, int] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        line = i + first_row
        first = earlier[i] or here.get(r.sample_id)
        if r.sample_id is None:
            reasons[i] = "missing sample_id"
        elif first:
            reasons[i] = f"duplicate sample_id (first at row {first})"
        elif r.split not in SPLITS:
            reasons[i] = f"unknown split: {r.split!r} (expected one of {', '.join(SPLITS)})"
        elif r.label is not None and r.split != "unlabeled" and r.label not in label_set:
            reasons[i] = f"unknown label: {r.label!r}"
        elif r.label is None and r.split in LABELED_SPLITS:
            reasons[i] = f"missing label: split {r.split} needs one"
        if r.sample_id is not None and not first:
            here[r.sample_id] = line
    seen.add(list(here), list(here.values()))
    flags = _candidate_flags(df, reasons)
    todo = [(i, col, df.at[i, col]) for i in range(len(df)) if i not in reasons for col in ("video", "audio")
            if df.at[i, col] is not None]
    checked = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # pool.map submits every item at once, a future (~2 KB) each: in chunks the
        # peak stays flat in the manifest's size (20,000 rows held 80 MB of futures).
        for start in range(0, len(todo), CHECK_CHUNK):
            checked += pool.map(lambda item: _media_check(item[2], check_media), todo[start:start + CHECK_CHUNK])
    info: dict[tuple[int, str], MediaInfo | None] = {}
    for (i, col, value), (meta, problem) in zip(todo, checked):
        if problem is None and col == "audio" and meta is not None and not meta.has_audio:
            problem = "no audio stream"
        if problem is not None and i not in reasons:
            reasons[i] = f"bad {col}: {problem}"
        info[(i, col)] = meta

    has_video, has_audio, has_text = [], [], []
    for i in range(len(df)):
        video, audio = df.at[i, "video"], df.at[i, "audio"]
        v, a = info.get((i, "video")), info.get((i, "audio"))
        # Without decoding we trust that a referenced file holds what its column says.
        hv = video is not None and (v.has_video if v else not check_media)
        ha = (audio is not None and (a.has_audio if a else not check_media)) or (
            audio is None and video is not None and (v.has_audio if v else not check_media)
        )
        ht = df.at[i, "text"] is not None
        has_video.append(bool(hv))
        has_audio.append(bool(ha))
        has_text.append(bool(ht))
        if i not in reasons and not (hv or ha or ht):
            reasons[i] = "no usable modality (no video, audio or text)"
    df["has_audio"], df["has_video"], df["has_text"] = has_audio, has_video, has_text
    df.loc[df["split"] == "unlabeled", "label"] = None
    if "candidate" in df:
        df["candidate"] = np.where(flags, "1", "")
    candidates = pd.DataFrame({"sample_id": df["sample_id"][flags].astype(str).to_numpy(),
                               "reason": [reasons.get(i, "") for i in np.flatnonzero(flags)]})

    bad = sorted(reasons)
    quarantine = pd.DataFrame(
        {
            "sample_id": [df.at[i, "sample_id"] or "" for i in bad],
            "row": [i + first_row for i in bad],
            "reason": [reasons[i] for i in bad],
        },
        columns=["sample_id", "row", "reason"],
    )
    clean = df.drop(index=bad).reset_index(drop=True)
    return Validation(manifest="", clean=clean, quarantine=quarantine, candidates=candidates, counts=_counts(clean))


def _counts(clean: pd.DataFrame) -> pd.DataFrame:
    """Per split: rows, rows per label, rows per modality present (``Validation.counts``)."""
    by_split = clean.groupby("split", sort=False)
    table = pd.crosstab(clean["split"], clean["label"].fillna("(none)")) if len(clean) else pd.DataFrame()
    table.insert(0, "rows", by_split.size())
    for mod in MODALITIES:
        table[mod] = by_split[f"has_{mod}"].sum().astype(int)
    return table


def _candidate_flags(df: pd.DataFrame, reasons: dict[int, str]) -> np.ndarray:
    """Per row: marked ``candidate``? A value that is no yes/no is the row's reason to be quarantined."""
    if "candidate" not in df:
        return np.zeros(len(df), bool)
    values = df["candidate"].fillna("").astype(str).str.strip().str.lower()
    unknown = ~values.isin(list(CANDIDATE_VALUES))
    for i in np.flatnonzero(unknown.to_numpy()):
        reasons.setdefault(i, f"candidate: {df.at[i, 'candidate']!r} is not one of 1, 0, true, false, yes, no")
    return values.map(CANDIDATE_VALUES).fillna(False).to_numpy(bool)
