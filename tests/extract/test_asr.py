"""Speech recognition: the recognisers, the ``asr`` stage into the store, text features from transcripts,
and clips without text in ``mer predict`` / ``mer serve``.

Whisper is a tiny random-weight model built from a config (no weights can be
downloaded here), so its transcripts are noise but its generation path is the
real one. PocketSphinx, whose English model ships in its wheel, is measured on
real speech made by espeak-ng.
"""

import dataclasses
import shutil
import socket
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
from tiny_whisper import build_tiny_whisper

from mer.config import AsrSpec, EncoderSpec, job_from_dict
from mer.errors import MerError


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return str(build_tiny_whisper(tmp_path_factory.mktemp("whisper")))


def test_whisper_windows_languages_and_the_no_speech_rule(whisper):
    from mer.encoders.asr import build_transcriber
    from mer.encoders.versions import asr_version

    rng = np.random.default_rng(0)
    five, one = 0.1 * rng.standard_normal(5 * 16000).astype(np.float32), np.zeros(16000, np.float32)
    spec = AsrSpec(model=whisper, chunk_seconds=2.0, batch_size=2, max_new_tokens=6)
    detected = build_transcriber(spec).encode([five, one])
    assert all(t.text and t.language in ("en", "zh", "de") for t in detected)
    assert all(np.isfinite(t.avg_logprob) and t.avg_logprob < 0 and 0 < t.no_speech_prob < 1 for t in detected)
    # 5 s in 2 s windows: three windows' texts, joined
    windows = build_transcriber(AsrSpec(model=whisper, chunk_seconds=5.0, max_new_tokens=6)).encode([five[:32000]] * 3)
    assert len(detected[0].text.split()) > len(windows[0].text.split()) and windows[0] == windows[2]
    fixed = build_transcriber(AsrSpec(model=whisper, language="zh", max_new_tokens=6)).encode([five])
    assert fixed[0].language == "zh"
    # Whisper's rule: probably not speech and not confidently decoded -> empty text, probability kept
    silent = build_transcriber(AsrSpec(model=whisper, no_speech_threshold=0.0, logprob_threshold=0.0)).encode([one])
    assert silent[0].text == "" and silent[0].no_speech_prob > 0
    # the version follows what changes a transcript, not the batch size
    assert asr_version(spec) == asr_version(AsrSpec(model=whisper, chunk_seconds=2.0, batch_size=7, max_new_tokens=6))
    assert asr_version(spec) != asr_version(AsrSpec(model=whisper, chunk_seconds=2.0, language="zh", max_new_tokens=6))


@pytest.mark.parametrize("encoders, message", [
    ({"text": {"alias": "minilm", "source": "speech"}}, "encoders.text.source: 'speech' is not one of"),
    ({"audio": {"alias": "logmel", "source": "asr"}}, "encoders.audio.source: only the text role reads transcripts"),
    ({"text": {"alias": "minilm", "source": "asr", "asr": {"engine": "kaldi"}}},
     "encoders.text.asr.engine: unknown engine 'kaldi'"),
    ({"text": {"alias": "minilm", "source": "auto", "asr": {"engine": "pocketsphinx", "language": "zh"}}},
     "encoders.text.asr.language: pocketsphinx ships a US-English model only"),
])
def test_bad_text_sources_are_one_line_errors(encoders, message):
    from mer.encoders import check_streams

    job = job_from_dict({"name": "a", "manifest": "m.csv", "encoders": encoders})
    with pytest.raises(MerError, match=message):
        check_streams(job.streams())


def test_the_asr_stage_needs_a_text_encoder_that_reads_transcripts():
    from mer.runner import check_job

    job = job_from_dict({"name": "a", "manifest": "m.csv", "encoders": {"text": "minilm"}, "stages": ["asr"]})
    with pytest.raises(MerError, match="stage asr: no text encoder reads transcripts"):
        check_job(job)


def test_a_run_trained_on_manifest_text_warns_that_asr_is_a_shift():
    from mer.serve.predictor import _recogniser

    manifest_text = SimpleNamespace(spec=EncoderSpec(alias="minilm"))
    assert _recogniser(manifest_text, None, "cpu") == (None, "")
    transcriber, warning = _recogniser(manifest_text, AsrSpec(engine="pocketsphinx"), "cpu")
    assert transcriber.label.startswith("asr:pocketsphinx:en-us@") and "trained on manifest transcripts" in warning
    own = SimpleNamespace(spec=EncoderSpec(alias="minilm", source="auto", asr=AsrSpec(engine="pocketsphinx")))
    assert _recogniser(own, None, "cpu")[1] == ""
    with pytest.raises(MerError, match="--asr names another recogniser"):
        _recogniser(own, AsrSpec(engine="whisper"), "cpu")
    with pytest.raises(MerError, match="the run has no text encoder"):
        _recogniser(None, AsrSpec(engine="pocketsphinx"), "cpu")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_whisper_stage_store_text_features_predict_and_serve(tmp_path, whisper, ray_local, capsys):
    from ray import serve

    from mer.corpus.demo import make_demo_corpus
    from mer.encoders import feature_ref
    from mer.encoders.versions import source_label
    from mer.runner import run_job
    from mer.serve.app import ServeArgs, start
    from mer.serve.predictor import Predictor
    from mer.store import open_store
    from mer_cli import run_mer

    manifest = make_demo_corpus(tmp_path / "demo", n_train=16, n_unlabeled=0, n_test=6, seed=5, workers=1)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[frame.index % 2 == 1, "text"] = ""  # half the clips come without a transcript
    frame.to_csv(manifest, index=False)
    asr = {"model": whisper, "chunk_seconds": 2.0, "batch_size": 4, "max_new_tokens": 6}
    job = job_from_dict({
        "name": "asr", "manifest": str(manifest), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "encoders": {"audio": "logmel", "text": {"alias": "minilm", "source": "auto", "asr": asr}},
        "stages": ["validate", "asr", "extract", "train"],
        "extract": {"num_actors": 2, "gpus_per_actor": 1}, "train": {"epochs": 1, "seeds": [0], "hidden": 16, "baseline": None},
    })
    results = run_job(job, echo=lambda _: None)
    without = set(frame.loc[frame["text"] == "", "sample_id"])
    transcribed = results["asr"]["text"]
    assert transcribed["written"] == len(without) and transcribed["failed"] == 0
    assert transcribed["table"].startswith("transcripts__whisper__")
    assert set(transcribed["per_gpu"]) == {"0", "1"}  # one recogniser actor pinned to each (fake) GPU
    assert results["extract"]["text"]["written"] == len(frame)  # every transcript of noise has text
    # rerun: transcripts and features are stored, nothing is done twice
    again = run_job(dataclasses.replace(job, stages=["asr", "extract"]), echo=lambda _: None)
    assert again["asr"]["text"]["written"] == 0 and again["extract"]["text"]["written"] == 0

    store = open_store(job.store)
    label = source_label(job.encoder("text").recogniser())
    text = store.open_table(results["extract"]["text"]["table"]).to_pandas().set_index("sample_id")
    assert (text.loc[sorted(without), "text_source"] == label).all()
    assert (text.drop(index=sorted(without))["text_source"] == "manifest").all()
    # features of transcripts are their own version, never mixed with the manifest's
    assert results["extract"]["text"]["version"] != feature_ref("text", EncoderSpec(alias="minilm")).version
    # query: a sample's transcript, and the transcripts table as Parquet
    sid = sorted(without)[0]
    code, shown, _ = run_mer(capsys, "query", "get", sid, "--store", job.store)
    assert code == 0 and transcribed["table"] in shown and "no_speech_prob" in shown and "text_source: asr:whisper" in shown
    assert run_mer(capsys, "query", "export", "--encoder", "transcripts", tmp_path / "t.parquet", "--store", job.store)[0] == 0
    exported = pd.read_parquet(tmp_path / "t.parquet")
    assert set(exported["sample_id"]) == without and (exported["text"] != "").all()

    # predict: a clip without text is transcribed with the run's recogniser and says so
    predictor = Predictor.from_run(job.run_dir)
    assert predictor.shift_warning == "" and predictor.describe()["asr"] == label
    clip = str(manifest.parent / "media" / f"{sid}.mp4")
    out = predictor.predict_rows([{"sample_id": "a", "video": clip}, {"sample_id": "b", "video": clip, "text": "Hi."}])
    assert out["error"].tolist() == ["", ""] and out["text_source"].tolist() == [label, "input"]
    stored_text = store.read_transcripts("whisper", predictor.transcriber.version).set_index("sample_id")
    assert out.at[0, "transcript"] == stored_text.at[sid, "text"]  # the same transcript as the stage made

    # serve: the same answer over HTTP
    url = start(ServeArgs(run_dir=job.run_dir, max_seconds=30.0), "127.0.0.1", _free_port())
    try:
        with open(clip, "rb") as f:
            reply = requests.post(f"{url}/predict", files={"file": (f"{sid}.mp4", f)}, timeout=300).json()
    finally:
        serve.shutdown()
    (answer,) = reply["predictions"]
    assert answer["text_source"] == label and answer["transcript"] == out.at[0, "transcript"]
    assert answer["probabilities"] == pytest.approx({c[2:]: out.at[0, c] for c in out if c.startswith("p_")}, abs=1e-5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (.ci/run installs it)")
def test_pocketsphinx_transcribes_espeak_speech(tmp_path):
    from jiwer import wer

    from mer.corpus.speech import speak
    from mer.encoders.asr import build_transcriber
    from mer.corpus.media import load_audio

    sentences = ["I can't believe you did that to me", "we need to buy some milk and bread",
                 "the meeting moved to room three", "please leave me alone"]
    waves = [load_audio(str(speak(s, tmp_path / f"{i}.wav", seed=i)), sr=16000) for i, s in enumerate(sentences)]
    transcriber = build_transcriber(AsrSpec(engine="pocketsphinx"))
    found = transcriber.encode(waves + [np.zeros(16000, np.float32)])
    assert wer(sentences, [t.text for t in found[:4]]) < 0.5  # measured: see benchmarks/asr_quality.py
    assert all(t.language == "en" and np.isfinite(t.avg_logprob) for t in found[:4])
    assert found[4].text == ""  # silence: an empty transcript, not a failure
