"""The official MER2024 / MER2025 releases as a mer manifest (``mer corpus import``).

The layouts are the organisers' (as MERTools' ``toolkit/preprocess/mer2024.py``
and ``MER2025_Track1/toolkit/preprocess/mer2025.py`` read them):

* **mer2025**: ``video/<name>.mp4`` (every clip: 132,171), ``audio/<name>.wav``
  (16 kHz, pre-extracted), ``subtitle_chieng.csv`` (``name, chinese, english``),
  ``track1_train_disdim.csv`` (``name, discrete``: the 7,369 labeled clips) and
  ``track_all_candidates.csv`` (``name``: the 20,000 clips to predict);
* **mer2024**: ``video-labeled/`` (the labeled clips, any extension) with
  ``label-disdim.csv`` (``name, discrete``), ``video-unlabeled-with-test2noise/``
  (every other clip) and the subtitle file (``subtitle_chieng.csv`` or
  ``label-transcription.csv``: ``name, chinese[, english]``); a candidate list
  if given (``--candidates``).

Labeled clips become ``split=train``, every other clip ``split=unlabeled``;
the candidates are marked ``candidate=1`` (and stay unlabeled, so
self-training may pseudo-label them, as challenge participants do). Paths are
relative to the manifest. The subtitle file is read in chunks and rows are
written as they come, so memory holds one chunk plus the clips' names and
paths as Arrow arrays (``NameIndex``), whatever the release's size. A clip named in a list but missing on disk keeps its row:
validation quarantines it with its reason. A missing file or column of the
release is a one-line error naming it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mer.corpus.manifest import CHUNK_ROWS
from mer.corpus.names import NameIndex
from mer.errors import MerError

LAYOUTS = ("mer2025", "mer2024")
LANGUAGES = ("chinese", "english")
MANIFEST_COLUMNS = ["sample_id", "video", "audio", "text", "label", "split", "candidate"]
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class ReleaseError(MerError):
    """A release folder that does not have the layout it was imported as."""


@dataclass(frozen=True)
class Layout:
    """Where one release keeps its clips and lists (names relative to the release root)."""

    name: str
    labeled_videos: str
    other_videos: str | None
    audio: str | None
    labels: str
    subtitles: tuple[str, ...]
    candidates: str | None


LAYOUT = {
    "mer2025": Layout("mer2025", "video", None, "audio", "track1_train_disdim.csv", ("subtitle_chieng.csv",),
                      "track_all_candidates.csv"),
    "mer2024": Layout("mer2024", "video-labeled", "video-unlabeled-with-test2noise", None, "label-disdim.csv",
                      ("subtitle_chieng.csv", "label-transcription.csv"), None),
}


@dataclass
class ImportSummary:
    """What an import wrote: rows per split, candidates, and clips missing on disk."""

    manifest: Path
    rows: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    candidates: int = 0
    no_video: int = 0
    no_text: int = 0
    seconds: float = 0.0


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ReleaseError(f"{path}: missing ({what})")
    return path


def _read_columns(path: Path, columns: tuple[str, ...], what: str, **kwargs):
    """``pd.read_csv`` of the named columns (all text); ReleaseError naming the file or the missing column."""
    _require(path, what)
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReleaseError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise ReleaseError(f"{path}: no column '{missing[0]}' ({what}; found: {', '.join(map(str, header))})")
    return pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=False, encoding="utf-8-sig", **kwargs)


def _index_folder(index: NameIndex, folder: Path, suffixes: tuple[str, ...], base: Path, what: str) -> None:
    """Add ``name -> path relative to base`` for each clip in ``folder`` (one scan, in chunks, no per-clip stat)."""
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: missing (the release's {what} folder)")
    prefix = os.path.relpath(folder, base) + "/"
    names, paths = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in suffixes and entry.is_file():
                names.append(stem)
                paths.append(prefix + entry.name)
            if len(names) == CHUNK_ROWS:
                index.add(names, paths)
                names, paths = [], []
    index.add(names, paths)


def _subtitle_chunks(root: Path, layout: Layout, language: str) -> Iterator[pd.DataFrame]:
    """``name, text`` chunks of the release's subtitle file (the first of ``layout.subtitles`` present)."""
    found = [root / s for s in layout.subtitles if (root / s).exists()]
    if not found:
        raise ReleaseError(f"{root / layout.subtitles[0]}: missing (the release's transcripts)")
    for chunk in _read_columns(found[0], ("name", language), f"transcripts in {language}", chunksize=CHUNK_ROWS):
        yield chunk.rename(columns={language: "text"})


def import_release(layout_name: str, root: str | os.PathLike, out: str | os.PathLike,
                   language: str = "chinese", candidates: str | os.PathLike | None = None) -> ImportSummary:
    """Write ``out`` (a manifest CSV with a ``candidate`` column) for the release at ``root``.

    Args:
        layout_name: ``mer2025`` or ``mer2024``.
        root: the release folder as downloaded.
        out: the manifest to write; media paths in it are relative to its folder.
        language: transcript column used as ``text`` (``chinese`` or ``english``).
        candidates: a CSV with a ``name`` column listing the clips to predict
            (default: the layout's own list, ``track_all_candidates.csv`` for mer2025).

    Raises:
        ReleaseError: unknown layout or language, or a list, column or folder of the release is missing.
    """
    if layout_name not in LAYOUT:
        raise ReleaseError(f"unknown release layout {layout_name!r} (known: {', '.join(LAYOUTS)})")
    if language not in LANGUAGES:
        raise ReleaseError(f"--language: expected {' or '.join(LANGUAGES)}, got {language!r}")
    start = time.perf_counter()
    layout, root, out = LAYOUT[layout_name], Path(root).absolute(), Path(out).absolute()
    if not root.is_dir():
        raise ReleaseError(f"{root}: no such release folder")
    labels = _read_columns(root / layout.labels, ("name", "discrete"), "the labeled clips")
    label_of = dict(zip(labels["name"].str.strip(), labels["discrete"].str.strip()))
    cand_file = Path(candidates) if candidates else (root / layout.candidates if layout.candidates else None)
    chosen = set() if cand_file is None else set(_read_columns(cand_file, ("name",), "the clips to predict")["name"].str.strip())
    videos, audio = NameIndex(pa.string()), NameIndex(pa.string())  # name -> path relative to the manifest
    for folder in filter(None, (layout.labeled_videos, layout.other_videos)):
        _index_folder(videos, root / folder, VIDEO_EXTENSIONS, out.parent, "video")
    if layout.audio:
        _index_folder(audio, root / layout.audio, (".wav",), out.parent, "audio")
    missing_video = os.path.relpath(root / layout.labeled_videos, out.parent)
    summary = ImportSummary(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    seen = NameIndex()

    def rows(names: pd.Series, texts: pd.Series) -> pd.DataFrame:
        """Manifest rows of a chunk of clips, built column by column."""
        names = names.reset_index(drop=True)
        label = names.map(label_of).fillna("")
        split = label.where(label == "", "train").replace("", "unlabeled")
        video = videos.get(names).to_pandas()
        chunk = pd.DataFrame({
            "sample_id": names.to_numpy(),
            "video": video.fillna(missing_video + "/" + names + ".mp4").to_numpy(),
            "audio": audio.get(names).to_pandas().fillna("").to_numpy(),
            "text": texts.to_numpy(), "label": label.to_numpy(), "split": split.to_numpy(),
            "candidate": names.isin(chosen).map({True: "1", False: ""}).to_numpy(),
        })
        for name, n in chunk["split"].value_counts().items():
            summary.splits[name] = summary.splits.get(name, 0) + int(n)
        summary.candidates += int((chunk["candidate"] == "1").sum())
        summary.no_video += int(video.isna().sum())
        summary.no_text += int((chunk["text"] == "").sum())
        return chunk

    with open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(",".join(MANIFEST_COLUMNS) + "\n")
        for chunk in _subtitle_chunks(root, layout, language):
            names, texts = chunk["name"].str.strip(), chunk["text"].str.strip()
            fresh = ~names.duplicated() & ~seen.contains(names).to_numpy(zero_copy_only=False)
            rows(names[fresh], texts[fresh]).to_csv(f, header=False, index=False, lineterminator="\n")
            seen.add(names[fresh])
        # Clips without a transcript row: on disk, labeled or to be predicted, in name order.
        every = pa.concat_arrays([videos.names, pa.array(list(label_of) + sorted(chosen), pa.string())]).unique()
        rest = every.filter(pc.invert(seen.contains(every)))
        rest = rest.take(pc.array_sort_indices(rest))
        for start in range(0, len(rest), CHUNK_ROWS):
            names = rest.slice(start, CHUNK_ROWS).to_pandas()
            rows(names, pd.Series([""] * len(names), dtype=str)).to_csv(f, header=False, index=False,
                                                                       lineterminator="\n")
    os.replace(tmp, out)  # complete or absent: a crash leaves no half-written manifest
    summary.rows = sum(summary.splits.values())
    summary.seconds = round(time.perf_counter() - start, 2)
    return summary
