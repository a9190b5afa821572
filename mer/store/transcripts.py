"""Transcripts made by speech recognition: one table per recogniser version, keyed on sample_id.

``transcripts__<engine>__<version8>`` holds, per clip, the text (empty when the
recogniser found no speech), its language and the recogniser's confidence
(``avg_logprob``, ``no_speech_prob``). Text features made from it record the
transcripts' version in their own, and each row which source fed it. Upserts
are idempotent like the feature tables'.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

TRANSCRIPTS_PREFIX = "transcripts__"
TRANSCRIPTS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("language", pa.string()),
        pa.field("avg_logprob", pa.float32()),
        pa.field("no_speech_prob", pa.float32()),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("asr_version", pa.string(), nullable=False),
        pa.field("transcribed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
COLUMNS = ["sample_id", "text", "language", "avg_logprob", "no_speech_prob"]


def transcripts_table(engine: str, version: str) -> str:
    """``transcripts__<engine>__<version8>``."""
    return f"{TRANSCRIPTS_PREFIX}{engine}__{version[:8]}"


def write_transcripts(db, engine: str, version: str, rows: pd.DataFrame) -> int:
    """Upsert ``sample_id, split, text, language, avg_logprob, no_speech_prob`` rows; returns rows written."""
    if rows.empty:
        return 0
    frame = rows.assign(engine=engine, asr_version=version, transcribed_at=datetime.now(timezone.utc))
    table = pa.Table.from_pandas(frame[TRANSCRIPTS_SCHEMA.names], schema=TRANSCRIPTS_SCHEMA, preserve_index=False)
    tbl = db.create_table(transcripts_table(engine, version), schema=TRANSCRIPTS_SCHEMA, exist_ok=True)
    tbl.merge_insert("sample_id").when_matched_update_all().when_not_matched_insert_all().execute(table)
    return len(table)


def read_transcripts(db, engine: str, version: str) -> pd.DataFrame:
    """Every transcript of one recogniser version (``sample_id, text, language, avg_logprob, no_speech_prob``)."""
    name = transcripts_table(engine, version)
    if name not in db.list_tables().tables:
        return pd.DataFrame(columns=COLUMNS)
    return db.open_table(name).to_lance().to_table(columns=COLUMNS).to_pandas()
