"""Stage ``asr``: transcripts for clips that have none, and the text rows a text encoder reads.

A text encoder's ``source`` says where its transcripts come from: the
manifest's ``text`` (``manifest``), the recogniser's transcript of every clip
with audio (``asr``), or the manifest's where it has one and the recogniser's
elsewhere (``auto``). :func:`transcribe` runs the recogniser over the clips
that need it with the extraction machinery (decode tasks on CPUs, batched
generation on GPU-pinned actors) into the store's ``transcripts__`` table;
it is resumable and idempotent like extraction, and the extract stage calls it
for a text encoder that needs it, so ``stages: [validate, extract, ...]`` is
enough. A clip the recogniser finds no speech in gets an empty transcript (and
its no-speech probability) and no text features. Each text feature row
records which source fed it (``text_source``).
"""

from __future__ import annotations

import pandas as pd

from mer.config import EncoderSpec, ExtractConfig, Job, role_of
from mer.corpus.stage import clean_rows
from mer.corpus.validate import append_quarantine
from mer.encoders.versions import asr_version, source_label
from mer.errors import MerError
from mer.extract.pipeline import extract_rows
from mer.store import open_store


def needs_asr(rows: pd.DataFrame, spec: EncoderSpec) -> pd.Series:
    """Rows whose text comes from the recogniser: every row with audio (``asr``), those without text too (``auto``)."""
    audio = rows["has_audio"].astype(bool)
    if spec.source == "asr":
        return audio
    if spec.source == "auto":
        return audio & ~rows["has_text"].astype(bool)
    return pd.Series(False, index=rows.index)


def transcribe(rows: pd.DataFrame, spec: EncoderSpec, store_uri: str, cfg: ExtractConfig, run_dir: str,
               echo=print) -> dict:
    """Transcribe the rows ``spec`` needs transcripts of (skipping stored ones); failures are quarantined."""
    asr = spec.recogniser()

    def quarantine(failed: list[dict]) -> None:
        append_quarantine(run_dir, [{**f, "stage": "asr"} for f in failed])

    todo = rows[needs_asr(rows, spec)]
    result = extract_rows(todo, asr, store_uri, cfg, on_failed=quarantine)
    echo(f"   asr: {source_label(asr, result['version'])} -> {result['table']}: written {result['written']}, "
         f"skipped {result['skipped']} (already stored), failed {result['failed']}")
    return result


def text_rows(rows: pd.DataFrame, spec: EncoderSpec, store_uri: str) -> pd.DataFrame:
    """The rows a text encoder reads, with their ``text`` and ``text_source``.

    ``manifest``: rows with text, as they are. ``asr``/``auto``: the
    recogniser's transcript replaces the text of the rows :func:`needs_asr`
    names (``text_source`` = ``asr:<engine>:<model>@<version8>``; the others
    ``manifest``); a clip whose transcript is empty (no speech found) is left
    out, like a row without text, and so is one whose transcription failed
    (quarantined by :func:`transcribe`).
    """
    if spec.source == "manifest":
        return rows[rows["has_text"].astype(bool)]
    asr = spec.recogniser()
    need = needs_asr(rows, spec)
    version = asr_version(asr)
    found = open_store(store_uri).read_transcripts(asr.engine, version).set_index("sample_id")["text"]
    ids = rows.loc[need, "sample_id"].astype(str)
    rows = rows.assign(text_source="manifest")
    rows.loc[need, "text"] = ids.map(found).to_numpy()
    rows.loc[need, "text_source"] = source_label(asr, version)
    usable = (need & rows["text"].fillna("").str.strip().ne("")) | (~need & rows["has_text"].astype(bool))
    return rows[usable]


def run(job: Job, echo=print) -> dict:
    """Transcribe, for every text stream whose ``source`` is ``asr`` or ``auto``, the clips it needs."""
    check(job)
    rows = clean_rows(job)
    return {stream: transcribe(rows, spec, job.store, job.extract, job.run_dir, echo)
            for stream, spec in asr_streams(job).items()}


def asr_streams(job: Job) -> dict[str, EncoderSpec]:
    """The text streams that read transcripts made by a recogniser."""
    return {s: spec for s, spec in job.streams().items() if role_of(s) == "text" and spec.source != "manifest"}


def check(job: Job) -> None:
    """The ``asr`` stage needs a text encoder whose ``source`` is ``asr`` or ``auto``."""
    if not asr_streams(job):
        raise MerError("stage asr: no text encoder reads transcripts (set encoders.text.source: asr or auto)")
