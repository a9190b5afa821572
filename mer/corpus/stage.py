"""Stage ``validate``: check the job's manifest, quarantine bad rows, keep the clean ones.

Writes ``run_dir/quarantine.csv`` and ``run_dir/manifest_clean.csv`` (the usable
rows with absolute paths and ``has_*`` modality flags), so later stages can read
the clean rows without decoding every file again.
"""

from __future__ import annotations

from pathlib import Path

from mer.config import Job
from mer.corpus.validate import validate_manifest
from mer.errors import MerError

CLEAN_FILE = "manifest_clean.csv"


def run(job: Job, echo=print) -> dict:
    """Validate ``job.manifest`` against ``job.labels``; return a summary.

    Returns:
        ``{"rows": {split: n}, "modalities": {role: n}, "quarantined": n,
        "quarantine": path, "clean_manifest": path}``.

    Raises:
        ManifestError: the manifest is not a manifest.
        MerError: no usable row is left.
    """
    result = validate_manifest(job.manifest, job.labels, check_media=True)
    run_dir = Path(job.run_dir)
    quarantine = result.write_quarantine(run_dir)
    if result.clean.empty:
        raise MerError(f"{job.manifest}: no usable rows (see {quarantine})")
    clean = run_dir / CLEAN_FILE
    result.clean.to_csv(clean, index=False)
    echo(result.summary_table())
    return {
        "rows": {k: int(v) for k, v in result.clean["split"].value_counts().items()},
        "modalities": {m: int(result.clean[f"has_{m}"].sum()) for m in ("audio", "video", "text")},
        "quarantined": len(result.quarantine),
        "quarantine": str(quarantine),
        "clean_manifest": str(clean),
    }
