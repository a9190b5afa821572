"""mer.corpus.media on real files written with PyAV: values, resampling, sampling, typed errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mer.corpus.demo import write_mp4
from mer.corpus.media import (
    DecodeError,
    EmptyMediaError,
    MediaError,
    MissingMediaError,
    check_media,
    load_audio,
    load_frames,
    probe,
)
from mer.errors import MerError


def tone(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def ramp_frames(n: int, size: int = 64) -> np.ndarray:
    """Frame i is uniformly gray at level 4*i, so a decoded frame tells its index."""
    return np.stack([np.full((size, size, 3), min(255, 4 * i), np.uint8) for i in range(n)])


def peak_hz(audio: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[spec.argmax()])


def write_wav(path, audio: np.ndarray, sr: int, channels: int = 1) -> None:
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=sr, layout=layout)
        data = np.repeat(audio[None, :], channels, axis=0) if channels > 1 else audio[None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout=layout)
        frame.sample_rate = sr
        c.mux(s.encode(frame))
        c.mux(s.encode(None))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s, 12 fps gray ramp + a 440 Hz tone, H.264/AAC."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_mp4(path, ramp_frames(24), tone(440, 2.0, 16000), fps=12, sr=16000)
    return path


def test_probe_reads_header(clip):
    info = probe(clip)
    assert info.has_audio and info.has_video
    assert (info.width, info.height) == (64, 64)
    assert info.fps == pytest.approx(12.0)
    assert info.sample_rate == 16000
    assert info.duration == pytest.approx(2.0, abs=0.15)


def test_load_audio_from_video_track(clip):
    audio = load_audio(clip)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(32000, abs=1600)  # AAC adds up to one frame of padding
    assert np.abs(audio).max() <= 1.0
    assert peak_hz(audio) == pytest.approx(440, abs=5)
    assert np.sqrt(np.mean(audio[4000:28000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_load_audio_resamples_stereo_44k_to_16k_mono(tmp_path):
    wav = tmp_path / "a.wav"
    write_wav(wav, tone(1000, 1.5, 44100), 44100, channels=2)
    audio = load_audio(wav)
    assert len(audio) == pytest.approx(24000, abs=50)
    assert peak_hz(audio) == pytest.approx(1000, abs=5)
    assert len(load_audio(wav, max_seconds=0.5)) == 8000


def test_load_frames_uniform_and_resized(clip):
    frames = load_frames(clip, 4)
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    # Sample points are the centres of 4 slices of 2 s: t = 0.25, 0.75, 1.25, 1.75 -> frames 3, 9, 15, 21.
    levels = frames.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [12, 36, 60, 84], atol=4)
    small = load_frames(clip, 3, size=(32, 16))
    assert small.shape == (3, 16, 32, 3)


def test_load_frames_more_frames_than_clip_repeats(clip):
    frames = load_frames(clip, 48)
    assert frames.shape[0] == 48
    levels = frames.reshape(48, -1).mean(axis=1)
    assert np.all(np.diff(levels) >= -2)  # still in time order


def test_long_clip_is_sampled_by_seeking(tmp_path):
    path = tmp_path / "long.mp4"
    n = 12 * 30  # 30 s > SEEK_THRESHOLD_S
    frames = np.stack([np.full((32, 32, 3), (i // 2) % 256, np.uint8) for i in range(n)])
    write_mp4(path, frames, tone(300, 30.0, 16000))
    got = load_frames(path, 5)
    expected = [(round(30 * (j + 0.5) / 5 * 12) // 2) for j in range(5)]  # frame index -> level
    np.testing.assert_allclose(got.reshape(5, -1).mean(axis=1), expected, atol=3)


def test_errors_are_typed_one_line_and_name_the_file(tmp_path, clip):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MissingMediaError) as exc:
        load_audio(missing)
    assert str(missing) in str(exc.value) and "\n" not in str(exc.value)
    assert exc.value.path == str(missing)
    assert issubclass(MediaError, MerError)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyMediaError):
        probe(empty)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DecodeError) as exc:
        load_frames(garbage, 2)
    assert str(garbage) in str(exc.value) and "\n" not in str(exc.value)

    wav = tmp_path / "only_audio.wav"
    write_wav(wav, tone(200, 0.5, 16000), 16000)
    with pytest.raises(DecodeError, match="no video stream"):
        load_frames(wav, 2)


def test_truncated_mp4_is_caught(tmp_path, clip):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov atom (index) is at the end: gone
    with pytest.raises(DecodeError):
        check_media(cut)


def test_truncated_faststart_mp4_is_caught(tmp_path):
    """With the index first, a header probe succeeds; the packet walk must still see the cut."""
    path = tmp_path / "fast.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(36):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    assert check_media(path).duration == pytest.approx(3.0, abs=0.1)
    data = path.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    assert probe(cut).has_video  # the header alone looks fine
    with pytest.raises(DecodeError, match="truncated"):
        check_media(cut)


def test_stream_without_duration_is_sampled_by_index(tmp_path):
    path = tmp_path / "raw.h264"  # an elementary stream: the container knows no duration
    with av.open(str(path), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i, rgb in enumerate(ramp_frames(24, size=32)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    assert probe(path).duration == 0.0
    levels = load_frames(path, 4).reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [12, 36, 60, 84], atol=4)  # frames 3, 9, 15, 21
