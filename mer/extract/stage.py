"""Stage ``extract``: every role's encoder over the clean manifest rows, into the store.

Rows come from the validate stage's ``run_dir/manifest_clean.csv`` when it is
newer than the manifest (no second pass over the media), else from validating
the manifest here. With ``train.audio_augment`` the audio's noisy training
copies (every non-test row, that corruption) are extracted too, into their
own encoder version. Each role sees only rows that have its modality (a text
encoder whose ``source`` is ``asr``/``auto`` has its clips transcribed first,
:mod:`mer.extract.transcribe`); a sample
whose decode or encode fails is appended to ``run_dir/quarantine.csv`` (stage
``extract:<role>``) and the run goes on. A rerun skips what the store holds.
"""

from __future__ import annotations

from mer.config import ConfigError, Job, role_of
from mer.corpus.stage import clean_rows
from mer.corpus.validate import append_quarantine
from mer.encoders import augment_spec, encoder_class
from mer.extract.pipeline import extract_rows
from mer.extract.transcribe import text_rows, transcribe
from mer.runfolder import RunFolder


def roles_of(job: Job, roles: list[str] | None = None) -> list[str]:
    """Roles to extract: ``roles``, else ``extract.roles``, else every role in ``encoders``."""
    roles = list(roles or job.extract.roles or job.encoders)
    for role in roles:
        if role not in job.encoders:
            raise ConfigError(f"extract.roles: role '{role}' has no encoder (encoders: {', '.join(job.encoders)})")
    return roles


def check(job: Job) -> None:
    """The extract stage's settings, checked before any stage runs (the encoders are checked for every job)."""
    roles_of(job)


def run(
    job: Job, echo=print, roles: list[str] | None = None, sample_ids=None, version: str | None = None,
) -> dict:
    """Extract features for ``roles`` (default: see ``roles_of``).

    Args:
        sample_ids: extract only these rows (default every clean row).
        version: write into this encoder version's table instead of the spec's
            own (cross-fitted fine-tuning writes each fold model's rows into one table).

    Returns:
        ``{stream: {table, encoder, version, written, skipped, failed, no_face_frames, ...}}``.
    """
    roles = roles_of(job, roles)
    rows = clean_rows(job)
    if sample_ids is not None:
        rows = rows[rows["sample_id"].astype(str).isin(set(sample_ids))]
    summary = {}
    # Every stream of the roles asked for (only the role's first with ``version``: a cross-fitted
    # fine-tune replaces that one); imported feature tables have nothing to extract.
    streams = [(s, spec) for s, spec in job.streams().items() if role_of(s) in roles and (version is None or s in roles)]
    work = []
    for stream, spec in streams:
        if not encoder_class(spec.alias).extracts:
            continue
        if spec.source != "manifest":  # transcripts first (resumable: stored ones are skipped)
            transcribe(rows, spec, job.store, job.extract, job.run_dir, echo)
        work.append((stream, spec, text_rows(rows, spec, job.store) if role_of(stream) == "text"
                     else rows[rows[f"has_{role_of(stream)}"].astype(bool)]))
    if job.train.audio_augment and "audio" in roles and version is None:
        noisy = rows[rows["has_audio"].astype(bool) & (rows["split"] != "test")]
        work.append(("audio (augmented copies)", augment_spec(job.encoder("audio"), job.train.audio_augment), noisy))
    quarantine_csv = RunFolder(job.run_dir).quarantine
    for role, spec, subset in work:

        def quarantine(failed: list[dict], role=role) -> None:
            append_quarantine(job.run_dir, [{**f, "stage": f"extract:{role}"} for f in failed])

        result = extract_rows(subset, spec, job.store, job.extract, on_failed=quarantine, version=version)
        summary[role] = result
        echo(
            f"   {role}: {result['encoder']} -> {result['table']}: written {result['written']}, "
            f"skipped {result['skipped']} (already stored), failed {result['failed']}"
            + (f" [{result['resources']}]" if "resources" in result else "")
            + (f" (see {quarantine_csv})" if result["failed"] else "")
        )
    return summary
