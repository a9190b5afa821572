"""Stage ``validate``: check the job's manifest, quarantine bad rows, keep the clean ones.

Writes ``quarantine.csv``, ``manifest_clean.csv`` (the usable rows with
absolute paths and ``has_*`` modality flags), so later stages can read the
clean rows without decoding every file again, and ``candidates.csv`` when the
manifest marks challenge candidates (every one, quarantined ones with their
reason, so ``mer export submission`` can name a candidate that lost its clip).
"""

from __future__ import annotations

import pandas as pd

from mer.config import Job
from mer.corpus.validate import MODALITIES, validate_manifest
from mer.errors import MerError
from mer.runfolder import RunFolder


def run(job: Job, echo=print) -> dict:
    """Validate ``job.manifest`` against ``job.labels``; return a summary.

    Returns:
        ``{"rows": {split: n}, "modalities": {role: n}, "quarantined": n,
        "quarantine": path, "clean_manifest": path, "candidates": n}``.

    Raises:
        ManifestError: the manifest is not a manifest.
        MerError: no usable row is left.
    """
    run_dir = RunFolder(job.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    result = validate_manifest(job.manifest, job.labels, check_media=True, clean_out=run_dir.clean_manifest,
                               keep_clean=False)
    quarantine = result.write_quarantine(run_dir.path)
    if not result.usable:
        run_dir.clean_manifest.unlink(missing_ok=True)
        raise MerError(f"{job.manifest}: no usable rows (see {quarantine})")
    candidates = result.candidates
    if len(candidates):
        run_dir.write_candidates(candidates)
    echo(result.summary_table())
    return {
        "rows": {k: int(v) for k, v in result.counts["rows"].items()},
        "modalities": {m: int(result.counts[m].sum()) for m in MODALITIES},
        "quarantined": len(result.quarantine),
        "quarantine": str(quarantine),
        "clean_manifest": str(run_dir.clean_manifest),
        "candidates": len(candidates),
    }


def clean_rows(job: Job) -> pd.DataFrame:
    """The usable manifest rows with ``has_audio``/``has_video``/``has_text`` flags.

    From the validate stage's ``manifest_clean.csv`` when it is newer than the
    manifest (no second pass over the media), else validated here.
    """
    from pathlib import Path

    clean = RunFolder(job.run_dir).clean_manifest
    manifest = Path(job.manifest)
    if clean.is_file() and manifest.is_file() and clean.stat().st_mtime >= manifest.stat().st_mtime:
        df = pd.read_csv(clean, dtype=str, keep_default_na=False)
        for col in ("has_audio", "has_video", "has_text"):
            df[col] = df[col].str.lower().eq("true")
        return df.replace({"": None})
    return validate_manifest(job.manifest, job.labels, check_media=True).clean
