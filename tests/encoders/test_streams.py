"""Several encoders for one modality: audio as logmel and eGeMAPS streams, through extraction, training,
robustness and prediction of a new clip."""

import numpy as np
import pytest

from mer.config import EncoderSpec, job_from_dict


def test_egemaps_is_88_functionals_per_clip_and_per_segment(tmp_path):
    from scipy.io import wavfile

    from mer.encoders import build_encoder

    t = np.arange(32000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (150 + 30 * np.sin(2 * np.pi * 3 * t)) * t)).astype(np.float32)
    wavfile.write(tmp_path / "a.wav", 16000, wave)
    enc = build_encoder(EncoderSpec(alias="egemaps", seq_len=4))
    (vector, seq), = enc.encode([enc.prepare({"sample_id": "a", "audio": str(tmp_path / "a.wav")})])
    assert enc.dim == 88 and vector.shape == (88,) and seq.shape == (4, 88)
    assert np.isfinite(vector).all() and np.isfinite(seq).all() and vector[0] > 0  # F0 (semitones from 27.5 Hz)


def test_a_role_with_two_encoders_is_two_streams():
    job = job_from_dict({"name": "s", "manifest": "m.csv",
                         "encoders": {"audio": [{"alias": "logmel"}, {"alias": "egemaps"}], "text": "minilm"}})
    assert list(job.streams()) == ["audio", "audio:egemaps", "text"]
    assert job.encoder("audio").alias == "logmel"
    three = [{"alias": "logmel"}, {"alias": "logmel", "max_seconds": 1}, {"alias": "logmel", "max_seconds": 2}]
    with pytest.raises(Exception, match=r"encoders.audio\[2\]: a second stream 'audio:logmel'; give it its own name"):
        job_from_dict({"name": "s", "manifest": "m.csv", "encoders": {"audio": three}})
    three[2]["name"] = "short"
    named = job_from_dict({"name": "s", "manifest": "m.csv", "encoders": {"audio": three}})
    assert list(named.streams()) == ["audio", "audio:logmel", "audio:short"]


@pytest.mark.timeout(1200)
def test_two_audio_streams_extract_train_withstand_and_predict(tmp_path, ray_local):
    from mer.corpus.demo import make_demo_corpus
    from mer.runfolder import RunFolder
    from mer.runner import run_job
    from mer.serve.predictor import Predictor

    manifest = make_demo_corpus(tmp_path / "demo", n_train=30, n_unlabeled=0, n_test=10, seed=4, workers=1)
    job = job_from_dict({
        "name": "streams", "manifest": str(manifest), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "encoders": {"audio": [{"alias": "logmel"}, {"alias": "egemaps", "seq_len": 4}], "text": {"alias": "minilm"}},
        "stages": ["validate", "extract", "train", "robustness"],
        "train": {"epochs": 2, "seeds": [0], "hidden": 16},
        "robustness": {"conditions": ["white@10", "audio:drop"], "models": ["agt", "linear"],
                       "reference_models": [], "final": False},
    })
    results = run_job(job, echo=lambda _: None)
    assert results["extract"]["audio:egemaps"]["written"] == 40 and results["extract"]["audio"]["written"] == 40
    run = RunFolder(job.run_dir)
    config = __import__("json").loads((run.systems()["agt"]["checkpoints"][0] / "config.json").read_text())
    assert config["dims"] == {"audio": 137, "audio:egemaps": 88, "text": 384}
    rows = {r["condition"]: r["cells"] for r in run.read("robustness.json")["conditions"]}
    assert list(rows) == ["clean", "audio white@10", "no audio"]
    assert all(len(c["waf"]) == 1 for cells in rows.values() for c in cells.values())
    predictor = Predictor.from_run(run.path)
    assert list(predictor.encoders) == ["audio", "audio:egemaps", "text"]
    clip = str(manifest.parent / "media" / "demo_00030.mp4")
    out = predictor.predict_rows([{"sample_id": "x", "video": clip, "text": "I miss her so much."}])
    assert out["error"].tolist() == [""]
    weights = out[["w_audio", "w_audio:egemaps", "w_text"]].to_numpy(float)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5) and (weights > 0).all()
