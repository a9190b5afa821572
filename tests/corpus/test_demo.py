"""The demo corpus: real decodable mp4s whose voice and face follow the emotion, label shift, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from mer.config import MER2024_LABELS
from mer.corpus.demo import ClipSpec, make_demo_corpus, make_speakers, plan_corpus, render_clip
from mer.corpus.faces import detect_faces, largest_face_crop
from mer.corpus.media import load_audio, load_frames, probe

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("demo"), n_train=6, n_unlabeled=3, n_test=3, seed=0)


def frame_stats(audio: np.ndarray, sr: int = SR):
    """Per 40 ms frame: RMS and autocorrelation pitch (Hz, NaN when unvoiced)."""
    hop, win = 320, 640
    rms, f0 = [], []
    lo, hi = sr // 400, sr // 70  # lags for 400 .. 70 Hz
    for start in range(0, len(audio) - win, hop):
        x = audio[start : start + win]
        x = x - x.mean()
        r = float(np.sqrt(np.mean(x**2)))
        rms.append(r)
        ac = np.correlate(x, x, mode="full")[win - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        voiced = ac[0] > 0 and ac[lag] / ac[0] > 0.5 and r > 0.01
        f0.append(sr / lag if voiced else np.nan)
    return np.array(rms), np.array(f0)


def render(tmp_path, emotion: str, seed: int, **kw):
    speaker = make_speakers(0)[4]  # one speaker: the emotion is the only difference
    path = tmp_path / f"{emotion}_{seed}_{kw.get('face_mode', 'x')}.mp4"
    render_clip(ClipSpec(sample_id="x", emotion=emotion, speaker=speaker, seed=seed, **kw), path)
    return path


def test_manifest_and_media_decode(corpus):
    m = pd.read_csv(corpus, dtype=str, keep_default_na=False)
    assert list(m.columns) == ["sample_id", "video", "audio", "text", "label", "split"]
    assert Counter(m["split"]) == {"train": 6, "unlabeled": 3, "test": 3}
    assert m["sample_id"].is_unique and (m["audio"] == "").all() and (m["text"] != "").all()
    assert (m.loc[m["split"] == "unlabeled", "label"] == "").all()
    assert set(m.loc[m["split"] != "unlabeled", "label"]) <= set(MER2024_LABELS)
    truth = pd.read_csv(corpus.parent / "unlabeled_truth.csv", dtype=str)
    assert list(truth["sample_id"]) == list(m.loc[m["split"] == "unlabeled", "sample_id"])
    assert set(truth["label"]) <= set(MER2024_LABELS)
    for rel in m["video"]:
        assert not rel.startswith("/")
        path = corpus.parent / rel
        info = probe(path)
        assert info.has_audio and info.has_video and info.fps == pytest.approx(12)
        assert info.duration == pytest.approx(2.0, abs=0.15)
        audio = load_audio(path)
        assert abs(len(audio) - 2 * SR) < 0.1 * SR and 0.005 < np.sqrt(np.mean(audio**2)) < 0.5
        assert load_frames(path, 4).shape == (4, 112, 112, 3)
    with open(corpus.parent / "media" / "demo_00000.mp4", "rb") as f:
        head = f.read(4096)
    assert b"ftyp" in head and b"avc1" in (corpus.parent / "media" / "demo_00000.mp4").read_bytes()


def test_deterministic_by_seed(corpus, tmp_path):
    again = make_demo_corpus(tmp_path / "again", n_train=6, n_unlabeled=3, n_test=3, seed=0)
    assert again.read_bytes() == corpus.read_bytes()
    assert (again.parent / "unlabeled_truth.csv").read_bytes() == (corpus.parent / "unlabeled_truth.csv").read_bytes()
    for name in ("demo_00000.mp4", "demo_00011.mp4"):
        a, b = corpus.parent / "media" / name, again.parent / "media" / name
        np.testing.assert_array_equal(load_audio(a), load_audio(b))
        np.testing.assert_array_equal(load_frames(a, 6), load_frames(b, 6))
    other = plan_corpus(6, 3, 3, seed=1)
    assert [s.seed for s, _, _ in other] != [s.seed for s, _, _ in plan_corpus(6, 3, 3, seed=0)]


def test_label_shift_like_mer_semi():
    plan = plan_corpus(400, 400, 200, seed=0)
    share = {
        split: Counter(spec.emotion for spec, s, _ in plan if s == split) for split in ("train", "unlabeled", "test")
    }
    rare = lambda c: (c["sad"] + c["worried"]) / sum(c.values())  # noqa: E731
    assert rare(share["train"]) == pytest.approx(0.10, abs=0.01)
    assert rare(share["test"]) == pytest.approx(0.50, abs=0.01)
    assert rare(share["unlabeled"]) == pytest.approx(0.50, abs=0.01)  # follows test, not train
    assert min(share["train"][lab] for lab in MER2024_LABELS) > 0
    balanced = plan_corpus(60, 60, 60, seed=0, balanced_test=True)
    test = Counter(spec.emotion for spec, s, _ in balanced if s == "test")
    assert set(test.values()) == {10}


def test_heldout_manifest_names_each_clips_speaker_in_a_group_column(tmp_path):
    manifest = make_demo_corpus(tmp_path, n_train=12, n_unlabeled=0, n_test=12, seed=101, workers=1, style="heldout")
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    plan = plan_corpus(12, 0, 12, seed=101, style="heldout")
    assert frame["group"].tolist() == [spec.speaker_id for spec, _, _ in plan]
    assert frame["group"].str.fullmatch(r"speaker\d\d").all()
    same = {spec.speaker_id: spec.speaker for spec, _, _ in plan}
    assert all(same[spec.speaker_id] == spec.speaker for spec, _, _ in plan)  # one id, one voice and look
    unseen = set(frame.loc[frame["split"] == "test", "group"]) - set(frame.loc[frame["split"] == "train", "group"])
    assert unseen and "group" not in pd.read_csv(make_demo_corpus(tmp_path / "d", 3, 0, 0, workers=1), nrows=0)


def test_text_is_ambiguous_on_part_of_emotional_samples():
    from mer.corpus.demo import NEUTRAL_TEXT, SLOTS

    plan = plan_corpus(300, 0, 300, seed=0)
    neutral_starts = {t.split("{")[0] for t in NEUTRAL_TEXT}
    emotional = [texts["english"] for spec, _, texts in plan if spec.emotion != "neutral"]
    neutral_worded = sum(any(text.startswith(s) for s in neutral_starts) for text in emotional) / len(emotional)
    assert 0.2 < neutral_worded < 0.5
    assert SLOTS  # templates are filled: no braces left
    assert not any("{" in texts["english"] or "{" in texts["chinese"] for _, _, texts in plan)


def test_voice_follows_emotion(tmp_path):
    stats = {}
    for emotion in ("angry", "sad", "happy", "neutral", "surprise"):
        rms, f0 = [], []
        for seed in range(3):
            audio = load_audio(render(tmp_path, emotion, seed, voice_intensity=1.0))
            r, p = frame_stats(audio)
            rms.append(np.mean(r))
            f0.append(p)
        stats[emotion] = (np.mean(rms), np.concatenate(f0))
    pitch = {e: np.nanmedian(f) for e, (_, f) in stats.items()}
    energy = {e: r for e, (r, _) in stats.items()}
    assert pitch["angry"] > 1.2 * pitch["sad"]
    assert energy["angry"] > 3 * energy["sad"]
    assert pitch["happy"] > pitch["neutral"] > pitch["sad"]
    spread = {e: np.nanstd(np.log2(f)) for e, (_, f) in stats.items()}
    assert spread["happy"] > 1.5 * spread["neutral"]
    # Surprise rises: pitch at the end of the clip above pitch at the start.
    audio = load_audio(render(tmp_path, "surprise", 7, voice_intensity=1.0))
    _, f0 = frame_stats(audio)
    half = len(f0) // 2
    assert np.nanmedian(f0[half:]) > 1.15 * np.nanmedian(f0[:half])


def mouth_curvature(frame: np.ndarray) -> float:
    """Centre minus corners height of the dark red mouth line (pixels; > 0 is a smile)."""
    crop, found = largest_face_crop(frame, margin=0.0)
    assert found
    h = crop.shape[0]
    low = crop[int(h * 0.6) :].astype(int)
    r, g, b = low[..., 0], low[..., 1], low[..., 2]
    mask = (r < 140) & (r - g > 35) & (r - b > 25)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 10
    span = xs.max() - xs.min()
    centre = np.abs(xs - (xs.min() + span / 2)) < span / 6
    sides = np.abs(xs - (xs.min() + span / 2)) > span / 3
    return float(ys[centre].mean() - ys[sides].mean())


def test_face_follows_emotion_and_is_detected(tmp_path):
    happy = load_frames(render(tmp_path, "happy", 1, face_intensity=1.0), 6)
    sad = load_frames(render(tmp_path, "sad", 1, face_intensity=1.0), 6)
    assert np.median([mouth_curvature(f) for f in happy]) > 1.5
    assert np.median([mouth_curvature(f) for f in sad]) < -1.5
    # The mouth region differs a lot more than the forehead between the two.
    diff = np.abs(happy.astype(int) - sad.astype(int)).mean(axis=(0, 3))
    assert diff[80:100, 35:77].mean() > 2 * diff[20:35, 35:77].mean()
    surprise = load_frames(render(tmp_path, "surprise", 1, face_intensity=1.0), 6)
    neutral = load_frames(render(tmp_path, "happy", 1, face_mode="neutral"), 6)
    # Eyes: a wide-open surprised eye shows more white sclera than a neutral one.
    white = lambda fr: (fr[:, 40:65].min(axis=-1) > 215).sum()  # noqa: E731
    assert white(surprise) > 1.3 * white(neutral)


def test_face_detector_finds_demo_faces(corpus):
    m = pd.read_csv(corpus, dtype=str, keep_default_na=False)
    found = []
    for rel in m["video"]:
        for frame in load_frames(corpus.parent / rel, 4):
            crop, ok = largest_face_crop(frame)
            found.append(ok)
            if ok:
                assert 40 <= crop.shape[0] <= 112 and 40 <= crop.shape[1] <= 112
    assert np.mean(found) >= 0.8


def test_no_face_returns_whole_frame():
    rng = np.random.default_rng(0)
    frame = np.full((112, 112, 3), 128, np.uint8)
    frame[::8] = rng.integers(0, 255, (14, 112, 3), dtype=np.uint8)
    crop, found = largest_face_crop(frame)
    assert not found and crop.shape == frame.shape
    assert len(detect_faces(frame)) == 0
