"""Manifest reading, validation, quarantine and the ``mer corpus validate`` command, on real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mer.config import MER2024_LABELS, Job
from mer.corpus import stage
from mer.corpus.demo import make_demo_corpus
from mer.corpus.manifest import ManifestError, read_manifest
from mer.corpus.validate import append_quarantine, validate_manifest

MER = str(Path(sys.executable).parent / "mer")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A clean 6-clip demo corpus (read-only for the tests)."""
    return make_demo_corpus(tmp_path_factory.mktemp("corpus"), n_train=2, n_unlabeled=2, n_test=2, seed=3)


@pytest.fixture
def dirty(tmp_path, corpus) -> Path:
    """The clean corpus plus one row of each bad kind, in a manifest beside its media."""
    shutil.copytree(corpus.parent / "media", tmp_path / "media")
    good = pd.read_csv(corpus, dtype=str, keep_default_na=False)
    data = (tmp_path / "media" / "demo_00000.mp4").read_bytes()
    (tmp_path / "media" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "media" / "empty.wav").write_bytes(b"")
    bad = pd.DataFrame(
        [
            ["missing", "media/nope.mp4", "", "hello", "happy", "train"],
            ["truncated", "media/truncated.mp4", "", "hello", "sad", "test"],
            ["zerowav", "", "media/empty.wav", "", "angry", "train"],
            ["badlabel", "media/demo_00001.mp4", "", "hi", "bored", "train"],
            ["demo_00002", "media/demo_00002.mp4", "", "again", "", "unlabeled"],
            ["nothing", "", "", "   ", "neutral", "train"],
            ["nolabel", "media/demo_00003.mp4", "", "hi", "", "test"],
            ["badsplit", "media/demo_00003.mp4", "", "hi", "sad", "validation"],
            ["textonly", "", "", "I am fine.", "neutral", "train"],
        ],
        columns=good.columns,
    )
    path = tmp_path / "manifest.csv"
    pd.concat([good, bad]).to_csv(path, index=False)
    return path


EXPECTED = {
    "missing": "bad video: file not found",
    "truncated": "bad video: cannot open",
    "zerowav": "bad audio: file is empty (0 bytes)",
    "badlabel": "unknown label: 'bored'",
    "demo_00002": "duplicate sample_id (first at row 4)",
    "nothing": "no usable modality",
    "nolabel": "missing label: split test needs one",
    "badsplit": "unknown split: 'validation'",
}


def test_clean_corpus_passes_untouched(corpus):
    v = validate_manifest(corpus, MER2024_LABELS)
    raw = pd.read_csv(corpus, dtype=str, keep_default_na=False)
    assert v.quarantine.empty
    assert list(v.clean["sample_id"]) == list(raw["sample_id"])
    assert list(v.clean["text"]) == list(raw["text"])
    assert list(v.clean["split"]) == list(raw["split"])
    assert v.clean["has_audio"].all() and v.clean["has_video"].all() and v.clean["has_text"].all()
    for video in v.clean["video"]:
        assert Path(video).is_absolute() and Path(video).is_file()
    assert v.clean["audio"].isna().all()  # audio comes from the video track


def test_each_bad_kind_is_quarantined_with_its_reason(dirty):
    v = validate_manifest(dirty, MER2024_LABELS)
    reasons = dict(zip(v.quarantine["sample_id"], v.quarantine["reason"]))
    assert set(reasons) == set(EXPECTED)
    for sid, start in EXPECTED.items():
        assert reasons[sid].startswith(start), (sid, reasons[sid])
    rows = dict(zip(v.quarantine["sample_id"], v.quarantine["row"]))
    assert rows["missing"] == 8  # file line: header, then 6 clean rows
    clean = v.clean.set_index("sample_id")
    assert len(clean) == 7  # 6 demo clips + the text-only row
    assert clean.loc["textonly", "has_text"] and not clean.loc["textonly", "has_video"]
    assert not clean.loc["textonly", "has_audio"]
    assert clean.loc["demo_00002", "text"] != "again"  # the first occurrence is the one kept


def test_write_and_append_quarantine_without_duplicates(dirty, tmp_path):
    v = validate_manifest(dirty, MER2024_LABELS)
    path = v.write_quarantine(tmp_path / "run")
    failure = {"sample_id": "demo_00004", "reason": "decode failed:\nbad frame", "stage": "extract"}
    append_quarantine(tmp_path / "run", [failure])
    append_quarantine(tmp_path / "run", [failure])  # a retry adds nothing
    v.write_quarantine(tmp_path / "run")  # a rerun of validate keeps the other stages' rows
    q = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(q.columns) == ["sample_id", "row", "reason", "stage"]
    assert (q["stage"] == "validate").sum() == len(EXPECTED)
    extract = q[q["stage"] == "extract"]
    assert list(extract["sample_id"]) == ["demo_00004"]
    assert extract["reason"].iloc[0] == "decode failed: bad frame"


def test_summary_table_counts_splits_labels_modalities(dirty):
    text = validate_manifest(dirty, MER2024_LABELS).summary_table()
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    total = dict(zip(lines["rows"], lines["total"][1:]))  # the header line starts with "rows"
    assert total["rows"] == "7"
    assert total["text"] == "7" and total["video"] == "6" and total["audio"] == "6"
    assert "quarantined:" in text and "duplicate sample_id" in text


def test_check_media_false_only_checks_existence(dirty):
    v = validate_manifest(dirty, MER2024_LABELS, check_media=False)
    reasons = dict(zip(v.quarantine["sample_id"], v.quarantine["reason"]))
    assert "truncated" not in reasons  # not decoded
    assert reasons["missing"].startswith("bad video: file not found")
    assert reasons["zerowav"].startswith("bad audio: file is empty")


def test_jsonl_manifest_with_relative_paths(tmp_path, corpus):
    rows = [
        {"sample_id": 1, "video": str(corpus.parent / "media" / "demo_00000.mp4"), "label": "sad", "split": "train"},
        {"sample_id": "b", "text": "hi there", "split": "unlabeled", "label": "sad"},
    ]
    sub = tmp_path / "sub"
    sub.mkdir()
    shutil.copy(corpus.parent / "media" / "demo_00001.mp4", sub / "clip.mp4")
    rows.append({"sample_id": "c", "video": "sub/clip.mp4", "label": "happy", "split": "test", "text": ""})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    df = read_manifest(path)
    assert list(df.columns[:6]) == ["sample_id", "video", "audio", "text", "label", "split"]
    assert df.loc[2, "video"] == str(sub / "clip.mp4")
    assert df.loc[0, "sample_id"] == "1" and df.loc[1, "video"] is None and df.loc[2, "text"] is None
    v = validate_manifest(path, MER2024_LABELS)
    assert v.quarantine.empty
    assert v.clean.loc[1, "label"] is None  # a label on an unlabeled row is dropped
    assert not v.clean.loc[2, "has_text"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("a,b\n1,2\n", "missing required column(s) sample_id, split"),
        ("", "empty file"),
        ("sample_id,split\n", "no rows"),
        ("sample_id,video\nx,y.mp4\n", "missing required column(s) split"),
    ],
)
def test_not_a_manifest(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ManifestError) as exc:
        read_manifest(path)
    assert problem in str(exc.value) and str(path) in str(exc.value)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "absent.csv")


def test_cli_not_a_manifest_exit_2_one_line(tmp_path):
    path = tmp_path / "notamanifest.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary junk\xff\xfe")
    res = subprocess.run([MER, "corpus", "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in res.stderr + res.stdout


def test_cli_validate_dirty_corpus_exit_0(dirty, tmp_path):
    out = tmp_path / "qdir"
    res = subprocess.run(
        [MER, "corpus", "validate", str(dirty), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "7 usable rows, 8 quarantined" in res.stdout and "next:" in res.stdout
    assert len(pd.read_csv(out / "quarantine.csv")) == 8


def test_stage_run_writes_quarantine_and_clean_manifest(dirty, tmp_path):
    job = Job(name="t", manifest=str(dirty), run_dir=str(tmp_path / "run"))
    summary = stage.run(job)
    assert summary["quarantined"] == 8
    assert summary["rows"] == {"train": 3, "unlabeled": 2, "test": 2}
    assert summary["modalities"] == {"audio": 6, "video": 6, "text": 7}
    clean = pd.read_csv(summary["clean_manifest"])
    assert len(clean) == 7 and Path(summary["quarantine"]).is_file()


def test_a_zero_second_file_is_too_short(monkeypatch):
    """A duration of 0 is a length, not 'unknown': such a clip is quarantined as too short."""
    from mer.corpus import validate
    from mer.corpus.media import MediaInfo

    monkeypatch.setattr(validate, "check_media", lambda path: MediaInfo(duration=0.0, has_audio=True, has_video=True))
    assert validate._media_check("clip.mp4", True) == (None, "too short (0.000 s)")


def test_validation_in_chunks_equals_one_pass(dirty, tmp_path, monkeypatch):
    """Three rows per chunk: duplicates across chunks name the first row, and the counts, quarantine
    and the streamed clean CSV equal the one-chunk result."""
    from mer.corpus import manifest

    whole = validate_manifest(dirty, MER2024_LABELS)
    monkeypatch.setattr(manifest, "CHUNK_ROWS", 3)
    assert len(list(manifest.read_manifest_chunks(dirty))) == 5  # 15 rows
    out = tmp_path / "clean.csv"
    chunked = validate_manifest(dirty, MER2024_LABELS, clean_out=out, keep_clean=False)
    assert chunked.clean is None and chunked.usable == len(whole.clean) == 7
    pd.testing.assert_frame_equal(chunked.quarantine, whole.quarantine, check_dtype=False)
    assert dict(zip(chunked.quarantine["sample_id"], chunked.quarantine["reason"]))["demo_00002"] == (
        EXPECTED["demo_00002"])  # the first demo_00002 is in another chunk
    assert chunked.summary_table() == whole.summary_table()
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written["sample_id"]) == list(whole.clean["sample_id"])
    assert not list(tmp_path.glob(".*.tmp"))
