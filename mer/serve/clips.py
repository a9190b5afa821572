"""New clips as manifest-style rows, checked before anything is decoded.

A clip file becomes the row ``{sample_id, video, text}``: a file without a
picture (a .wav) then gives audio only, exactly as a manifest row whose
``video`` has no video stream does in validation. The checks are the
validation's (``mer.corpus.media.check_media``: exists, not empty, opens,
packets not truncated; at least ``MIN_SECONDS`` long) plus an optional
duration limit for the server. Every problem is a ``MediaError`` whose one-line
message names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from mer.corpus.media import DecodeError, MediaError, check_media
from mer.corpus.validate import MIN_SECONDS, validate_manifest
from mer.errors import MerError

class ClipTooLongError(MediaError):
    """A clip longer than the server's ``--max-seconds``."""


class NoModalityError(MediaError):
    """A row with no usable modality (no decodable stream and no text)."""


def check_row(row: dict, max_seconds: float | None = None) -> dict:
    """The row with ``has_audio``/``has_video``/``has_text`` flags, after validation's checks.

    Args:
        row: ``sample_id`` plus any of ``video``, ``audio`` (paths) and ``text``.
        max_seconds: refuse media longer than this (``None``: any length).

    Raises:
        MediaError: a referenced file is missing, empty, not media, truncated,
            too short or too long, or the row has no usable modality.
    """
    infos = {}
    for column in ("video", "audio"):
        path = row.get(column)
        if not path:
            continue
        info = check_media(path)
        if info.duration and info.duration < MIN_SECONDS:
            raise DecodeError(path, f"too short ({info.duration:.3f} s)")
        if max_seconds and info.duration > max_seconds:
            raise ClipTooLongError(path, f"too long ({info.duration:.1f} s; the limit is {max_seconds:g} s)")
        infos[column] = info
    video, audio = infos.get("video"), infos.get("audio")
    if audio is not None and not audio.has_audio:
        raise DecodeError(row["audio"], "no audio stream")
    flags = {
        "has_video": bool(video and video.has_video),
        "has_audio": bool(audio or (video and video.has_audio)),
        "has_text": bool(str(row.get("text") or "").strip()),
    }
    if not any(flags.values()):
        where = row.get("video") or row.get("sample_id", "?")
        raise NoModalityError(where, "no usable modality (no audio, video or text)")
    return {**row, **flags}


def clip_row(path: str | os.PathLike, sample_id: str | None = None, text: str | None = None,
             max_seconds: float | None = None) -> dict:
    """One clip file (and optional transcript) as a checked row; the id defaults to the file's stem."""
    path = Path(path)
    row = {"sample_id": sample_id or path.stem, "video": str(path.absolute()), "audio": None, "text": text}
    return check_row(row, max_seconds)


def file_rows(paths: list[str], texts: list[str]) -> tuple[list[dict], list[str]]:
    """Checked rows for clip files, and one line per file that cannot be used.

    Args:
        paths: clip files (video or audio).
        texts: no transcript, or one per file in the same order.

    Raises:
        MerError: ``texts`` is neither empty nor one per file.
    """
    if texts and len(texts) != len(paths):
        raise MerError(f"--text given {len(texts)}x for {len(paths)} files: give one per file, in order")
    rows, problems, seen = [], [], {}
    for i, path in enumerate(paths):
        stem = Path(path).stem
        if stem in seen:
            problems.append(f"{path}: same sample_id '{stem}' as {seen[stem]} (rename it, or use --manifest)")
            continue
        seen[stem] = path
        try:
            rows.append(clip_row(path, text=texts[i] if texts else None))
        except MediaError as exc:
            problems.append(str(exc))
    return rows, problems


def manifest_rows(manifest: str, labels: list[str]) -> tuple[list[dict], list[str]]:
    """A manifest's clean rows (``validate_manifest``) and one line per quarantined row."""
    result = validate_manifest(manifest, labels, check_media=True)
    problems = [f"{manifest}: row {q.row} ({q.sample_id}): {q.reason}" for q in result.quarantine.itertuples()]
    return result.clean.to_dict("records"), problems
