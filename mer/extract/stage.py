"""Stage ``extract``: every role's encoder over the clean manifest rows, into the store.

Rows come from the validate stage's ``run_dir/manifest_clean.csv`` when it is
newer than the manifest (no second pass over the media), else from validating
the manifest here. With ``train.audio_augment`` the audio's noisy training
copies (every non-test row, that corruption) are extracted too, into their
own encoder version. Each role sees only rows that have its modality; a sample
whose decode or encode fails is appended to ``run_dir/quarantine.csv`` (stage
``extract:<role>``) and the run goes on. A rerun skips what the store holds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mer.config import ConfigError, Job
from mer.corpus.stage import CLEAN_FILE
from mer.corpus.validate import append_quarantine, validate_manifest
from mer.encoders import augment_spec, encoder_class
from mer.extract.pipeline import extract_rows


def clean_rows(job: Job) -> pd.DataFrame:
    """The usable manifest rows with ``has_audio``/``has_video``/``has_text`` flags."""
    clean = Path(job.run_dir) / CLEAN_FILE
    manifest = Path(job.manifest)
    if clean.is_file() and manifest.is_file() and clean.stat().st_mtime >= manifest.stat().st_mtime:
        df = pd.read_csv(clean, dtype={"sample_id": str, "label": str, "split": str}, keep_default_na=False)
        for col in ("has_audio", "has_video", "has_text"):
            df[col] = df[col].astype(str).str.lower().eq("true")
        return df.replace({"": None})
    return validate_manifest(job.manifest, job.labels, check_media=True).clean


def roles_of(job: Job, roles: list[str] | None = None) -> list[str]:
    """Roles to extract: ``roles``, else ``extract.roles``, else every role in ``encoders``."""
    roles = list(roles or job.extract.roles or job.encoders)
    for role in roles:
        if role not in job.encoders:
            raise ConfigError(f"extract.roles: role '{role}' has no encoder (encoders: {', '.join(job.encoders)})")
        expected = encoder_class(job.encoders[role].alias).role
        if expected and expected != role:
            raise ConfigError(f"encoders.{role}: '{job.encoders[role].alias}' is a {expected} encoder")
    return roles


def run(
    job: Job, echo=print, roles: list[str] | None = None, sample_ids=None, version: str | None = None,
) -> dict:
    """Extract features for ``roles`` (default: see ``roles_of``).

    Args:
        sample_ids: extract only these rows (default every clean row).
        version: write into this encoder version's table instead of the spec's
            own (cross-fitted fine-tuning writes each fold model's rows into one table).

    Returns:
        ``{role: {table, encoder, version, written, skipped, failed, no_face_frames, ...}}``.
    """
    roles = roles_of(job, roles)
    rows = clean_rows(job)
    if sample_ids is not None:
        rows = rows[rows["sample_id"].astype(str).isin(set(sample_ids))]
    summary = {}
    work = [(role, job.encoders[role], rows[rows[f"has_{role}"].astype(bool)]) for role in roles]
    if job.train.audio_augment and "audio" in roles and version is None:
        noisy = rows[rows["has_audio"].astype(bool) & (rows["split"] != "test")]
        work.append(("audio (augmented copies)", augment_spec(job), noisy))
    for role, spec, subset in work:

        def quarantine(failed: list[dict], role=role) -> None:
            append_quarantine(job.run_dir, [{**f, "stage": f"extract:{role}"} for f in failed])

        result = extract_rows(subset, spec, job.store, job.extract, on_failed=quarantine, version=version)
        summary[role] = result
        echo(
            f"   {role}: {result['encoder']} -> {result['table']}: written {result['written']}, "
            f"skipped {result['skipped']} (already stored), failed {result['failed']}"
            + (f" [{result['resources']}]" if "resources" in result else "")
            + (f" (see {Path(job.run_dir) / 'quarantine.csv'})" if result["failed"] else "")
        )
    return summary
