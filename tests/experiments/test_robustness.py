"""Corruptions of real decoded media, their own feature versions, noisy training copies, AGT's audio gate,
and a small end-to-end robustness table from real runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from mer.config import EncoderSpec, ConfigError, job_from_dict
from mer.corpus import corrupt
from mer.corpus.media import load_audio
from mer.encoders import build_encoder, feature_ref
from mer.experiments.robustness import parse_condition

SR = 16000


def _speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated signal with pauses (a stand-in for a spoken clip)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) * (t % 1.0 < 0.8)
    return (0.3 * voice * syllables + 0.001 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def decoded(tmp_path):
    """A WAV written to disk and decoded back with PyAV, plus a babble recording of other 'talkers'."""
    path = tmp_path / "clip.wav"
    wavfile.write(path, SR, _speechlike())
    babble = tmp_path / "babble.wav"
    wavfile.write(babble, SR, sum(_speechlike(5.0, seed=s) for s in range(1, 5)) / 4)
    return load_audio(path), str(babble)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble", "music", "hum"])
@pytest.mark.parametrize("snr", [20, 10, 5, 0])
def test_each_noise_hits_its_snr_on_decoded_audio(decoded, kind, snr):
    wave, babble = decoded
    c = corrupt.parse(f"{kind}@{snr}")
    out = corrupt.corrupt_audio(wave, c, corrupt.rng_for("clip", c), babble)
    assert out.shape == wave.shape and out.dtype == np.float32
    assert abs(corrupt.snr_db(wave, out) - snr) < 0.5


def test_mix_draws_kind_and_snr_per_clip_reproducibly(decoded):
    wave, _ = decoded
    c = corrupt.parse("mix@0:20")
    snrs = [corrupt.snr_db(wave, corrupt.corrupt_audio(wave, c, corrupt.rng_for(f"s{i}", c))) for i in range(12)]
    assert all(-0.5 < s < 20.5 for s in snrs) and np.std(snrs) > 2  # a range, not one level
    again = corrupt.corrupt_audio(wave, c, corrupt.rng_for("s3", c))
    assert np.array_equal(again, corrupt.corrupt_audio(wave, c, corrupt.rng_for("s3", c)))


def test_reverb_and_clipping_change_the_waveform_as_named(decoded):
    wave, _ = decoded
    wet = corrupt.corrupt_audio(wave, corrupt.parse("reverb@0.8"), np.random.default_rng(0))
    assert np.mean(wet**2) == pytest.approx(np.mean(wave.astype(np.float64) ** 2), rel=1e-3)
    # reverberation fills the pauses between syllables
    pauses = np.abs(wave) < 1e-2
    assert np.mean(np.abs(wet[pauses])) > 5 * np.mean(np.abs(wave[pauses]))
    clipped = corrupt.corrupt_audio(wave, corrupt.parse("clip@0.1"), np.random.default_rng(0))
    assert np.abs(clipped).max() == pytest.approx(0.1 * np.abs(wave).max(), rel=1e-5)


def test_video_corruptions():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    blurred = corrupt.corrupt_frames(frames, corrupt.parse("blur@4"), rng)
    assert np.abs(np.diff(blurred.astype(float), axis=2)).mean() < 0.3 * np.abs(np.diff(frames.astype(float), axis=2)).mean()
    dark = corrupt.corrupt_frames(frames, corrupt.parse("dark@0.25"), rng)
    assert dark.mean() < 0.25 * frames.mean()
    occluded = corrupt.corrupt_frames(frames, corrupt.parse("occlude@0.25"), np.random.default_rng(1))
    covered = np.all(occluded == 128, axis=(0, 3))
    assert covered.mean() == pytest.approx(0.25, abs=0.03)  # one box, same place in every frame


@pytest.mark.parametrize("text, message", [
    ("loud@3", "unknown kind 'loud'"), ("white", "expected white@<number>"), ("mix@10", "mix takes an SNR range"),
    ("clip@2", "a fraction in (0, 1)"), ("white@0:20", "white takes one level"),
])
def test_bad_corruptions_say_what_is_wrong(text, message):
    with pytest.raises(corrupt.CorruptionError, match=None) as err:
        corrupt.parse(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_conditions_name_their_role():
    assert parse_condition("babble@10")[0] == "audio" and parse_condition("blur@4")[0] == "video"
    assert parse_condition("text:drop")[0] == "text"
    with pytest.raises(Exception, match="say which role"):
        parse_condition("drop")
    with pytest.raises(Exception, match="corrupts video, not audio"):
        parse_condition("audio:blur@3")


def test_corrupted_features_get_their_own_encoder_version(tmp_path, decoded):
    clean = EncoderSpec(alias="logmel")
    noisy = dataclasses.replace(clean, corrupt="white@0")
    refs = {feature_ref("audio", s).table for s in (clean, noisy, dataclasses.replace(clean, corrupt="white@10"))}
    assert len(refs) == 3
    # a clean spec hashes as before the corrupt field existed: stored tables keep their names
    payload = {"alias": "logmel", "code": build_encoder(clean).code_version,
               "spec": {"seq_len": 16, "seq_dtype": "float32", "max_seconds": 30.0}, "weights": ""}
    import hashlib

    before = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert feature_ref("audio", clean).version == before
    path = tmp_path / "a.wav"
    wavfile.write(path, SR, _speechlike())
    row = {"sample_id": "s1", "audio": str(path)}
    enc = build_encoder(noisy)
    assert np.array_equal(enc.decode(row), enc.decode(row))  # the clip's own seeded draw
    assert abs(corrupt.snr_db(build_encoder(clean).decode(row), enc.decode(row))) < 0.5
    with pytest.raises(corrupt.CorruptionError, match="is a video corruption"):
        build_encoder(dataclasses.replace(clean, corrupt="blur@3"))


def test_recipe_keys_left_at_their_defaults_do_not_change_fit_identity(tmp_path):
    from mer.train.key import fingerprint
    from mer.train.stage import fit_settings

    base = {"name": "x", "manifest": "m.csv", "encoders": {"audio": {"alias": "logmel"}}}
    plain = fingerprint(fit_settings(job_from_dict(base)))
    assert "audio_gate" not in plain["train"] and "corrupt" not in plain["encoders"]["audio"]
    gated = fingerprint(fit_settings(job_from_dict({**base, "train": {"audio_gate": True}})))
    assert gated != plain
    with pytest.raises(ConfigError, match="robustness.conditions"):
        job_from_dict({**base, "ablation": {"snr_db": [10]}})


def test_agt_gate_at_zero_is_the_no_audio_path():
    from mer.models.agt import AGT

    torch.manual_seed(0)
    model = AGT({"audio": 8, "video": 6, "text": 5}, 6, hidden=16, heads=2, audio_gate=True).eval()
    batch = {r: {"vector": torch.randn(3, d), "present": torch.ones(3, dtype=torch.bool), "seq": torch.randn(3, 4, d),
                 "seq_mask": torch.ones(3, 4, dtype=torch.bool)} for r, d in (("audio", 8), ("video", 6), ("text", 5))}
    absent = {**batch, "audio": {**batch["audio"], "present": torch.zeros(3, dtype=torch.bool)}}
    with torch.no_grad():
        model.gate[-1].bias.fill_(-40.0)  # the gate distrusts every clip's audio
        assert torch.allclose(model(batch), model(absent), atol=1e-4)
        assert model.modality_weights(batch)["audio"].max() < 1e-5
        model.gate[-1].bias.fill_(40.0)  # fully trusted: audio guides as in the paper's AGT
        assert not torch.allclose(model(batch), model(absent), atol=1e-2)


def test_augmented_view_swaps_only_rows_that_have_a_noisy_copy(tmp_path):
    from mer.store import open_store
    from mer.train.data import AugmentedView, make_plan, read_plan, resolve_table

    store = open_store(tmp_path / "store")
    ids = [f"s{i}" for i in range(6)]
    split = ["train"] * 4 + ["test"] * 2
    common = {"sample_id": ids, "split": split, "label": ["sad"] * 6}
    store.upsert("logmel", "clean", {**common, "vector": [np.zeros(3, np.float32)] * 6})
    store.upsert("logmel", "noisy", {"sample_id": ids[:4], "split": split[:4], "label": ["sad"] * 4,
                                     "vector": [np.ones(3, np.float32)] * 4})
    clean = resolve_table(store, "audio", "logmel", "clean", 0)
    plan = make_plan(str(tmp_path / "store"), {"audio": clean}, 1.0, None,
                     {"audio": resolve_table(store, "audio", "logmel", "noisy", 0)})
    data = read_plan(plan)
    assert data.augment["audio"].rows.tolist() == [0, 1, 2, 3, -1, -1]
    every = AugmentedView(data, 1.0).batch(np.arange(6))["audio"]["vector"][:, 0].tolist()
    assert every == [1, 1, 1, 1, 0, 0]  # test rows have no copy: never swapped
    assert AugmentedView(data, 0.0).batch(np.arange(6))["audio"]["vector"].sum() == 0
    assert data.batch(np.arange(6))["audio"]["vector"].sum() == 0  # validation and prediction read clean rows


def test_conditions_say_whether_the_recipe_heard_them():
    heard, parse = corrupt.heard_in_training, corrupt.parse
    assert heard(parse("white@10"), "mix@0:20") and heard(parse("hum@0"), "mix@0:20")
    assert not heard(parse("babble@10"), "mix@0:20")  # other speech is not among mix's noises
    assert not heard(parse("white@25"), "mix@0:20")  # above the trained SNR range
    assert not heard(parse("reverb@0.8"), "mix@0:20") and not heard(parse("white@10"), "")
    assert heard(parse("babble@10"), "babble@10") and not heard(parse("blur@4"), "mix@0:20")


@pytest.mark.timeout(1200)  # the default 300 s ran out twice under load 11-16 (clean-clone CI beside other work)
def test_robustness_table_from_real_runs(ray_local, tmp_path):
    """validate, extract (with noisy training copies), train (gated AGT), robustness, report on 40 real clips."""
    from mer.corpus.demo import make_demo_corpus
    from mer.runner import run_job
    from mer.store import open_store

    manifest = make_demo_corpus(tmp_path / "demo", n_train=30, n_unlabeled=0, n_test=10, seed=3, workers=1)
    job = job_from_dict({
        "name": "rob", "manifest": str(manifest), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "encoders": {"audio": {"alias": "logmel"}, "video": {"alias": "frames"}, "text": {"alias": "minilm"}},
        "stages": ["validate", "extract", "train", "robustness", "report"],
        "train": {"epochs": 2, "seeds": [0], "hidden": 16, "baseline": None, "audio_augment": "mix@0:20",
                  "augment_p": 0.5, "audio_gate": True, "modality_dropout": 0.2},
        "robustness": {"conditions": ["babble@0", "audio:drop", "blur@4", "text:drop"], "models": ["agt", "linear"],
                       "reference_models": ["linear"], "final": False},
    })
    run_job(job, echo=lambda _: None)
    result = json.loads((tmp_path / "run" / "robustness.json").read_text())
    rows = {r["condition"]: r["cells"] for r in result["conditions"]}
    assert list(rows) == ["clean", "audio babble@0", "no audio", "video blur@4", "no text"]
    seen = {r["condition"]: r["seen_in_training"] for r in result["conditions"]}
    assert seen == {"clean": True, "audio babble@0": False, "no audio": True, "video blur@4": False, "no text": True}
    assert set(rows["clean"]) == {"agt", "linear", "video+text: linear"}
    assert all(len(cell["waf"]) == 1 for cells in rows.values() for cell in cells.values())
    # audio conditions never touch the video+text model; a video condition does
    assert rows["no audio"]["video+text: linear"] == rows["clean"]["video+text: linear"]
    store = open_store(job.store)
    sizes = {name: store.describe_table(name)["rows"] for name in store.table_names() if name.startswith("features__")}
    spec = job.encoders["audio"]
    assert sizes[feature_ref("audio", dataclasses.replace(spec, corrupt="mix@0:20")).table] == 30  # train rows only
    assert sizes[feature_ref("audio", dataclasses.replace(spec, corrupt="drop")).table] == 0
    noisy = [n for n in sizes if n.startswith("features__logmel__") and sizes[n] == 10]
    assert len(noisy) == 1  # babble@0 on the 10 test clips, its own table
    assert "## Robustness: corrupted test media" in (tmp_path / "run" / "report.md").read_text()
