"""Media decoding with PyAV (bundled FFmpeg): audio to 16 kHz mono, sampled RGB frames.

Every later stage decodes through these functions, so that a file that cannot be
read fails the same way everywhere: a ``MediaError`` subclass whose one-line
message names the file, never a raw FFmpeg traceback. Nothing here imports Ray.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from mer.errors import MerError

#: Clips shorter than this are decoded front to back when sampling frames;
#: longer ones seek to each sample point (decoding a long film is slower than seeking).
SEEK_THRESHOLD_S = 20.0


class MediaError(MerError):
    """A media file that cannot be used; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever FFmpeg said
        super().__init__(f"{self.path}: {self.problem}")


class MissingMediaError(MediaError):
    """The file does not exist (or is not a regular file)."""


class DecodeError(MediaError):
    """FFmpeg cannot open or decode the file (corrupt, truncated, wrong format, no such stream)."""


class EmptyMediaError(MediaError):
    """The file is readable but holds nothing: zero bytes, no samples, no frames."""


@dataclass
class MediaInfo:
    """What ``probe`` learns from a container's header, without decoding.

    Attributes:
        duration: seconds (0.0 when the container does not say).
        has_audio: the file has an audio stream.
        has_video: the file has a video stream.
        width: video width in pixels (0 without video).
        height: video height in pixels (0 without video).
        fps: average video frame rate (0.0 without video).
        sample_rate: audio sample rate in Hz (0 without audio).
    """

    duration: float
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    sample_rate: int = 0


@contextmanager
def _open(path: str | os.PathLike):
    """Open ``path`` with PyAV, turning every failure into a typed ``MediaError``."""
    p = Path(path)
    if not p.is_file():
        raise MissingMediaError(p, "file not found")
    if p.stat().st_size == 0:
        raise EmptyMediaError(p, "file is empty (0 bytes)")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise DecodeError(p, f"cannot open: {exc}") from None
    try:
        yield container
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise DecodeError(p, f"decode failed: {exc}") from None
    finally:
        container.close()


def _duration(container, stream=None) -> float:
    """Container or stream duration in seconds; 0.0 when unknown."""
    if stream is not None and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read stream metadata only (cheap: no decoding).

    Args:
        path: audio or video file.

    Returns:
        A ``MediaInfo``.

    Raises:
        MissingMediaError, EmptyMediaError, DecodeError.
    """
    with _open(path) as c:
        video = c.streams.video[0] if c.streams.video else None
        audio = c.streams.audio[0] if c.streams.audio else None
        info = MediaInfo(duration=_duration(c), has_audio=audio is not None, has_video=video is not None)
        if video is not None:
            info.width, info.height = video.codec_context.width, video.codec_context.height
            info.fps = float(video.average_rate or video.guessed_rate or 0.0)
        if audio is not None:
            info.sample_rate = int(audio.codec_context.sample_rate or 0)
        if not info.has_audio and not info.has_video:
            raise DecodeError(path, "no audio or video stream")
        return info


def check_media(path: str | os.PathLike) -> MediaInfo:
    """Probe and demux every packet, then decode the first frame of each stream.

    Cheaper than a full decode (packets are read, not decoded) but catches what a
    header probe misses: a truncated file whose index promises more packets than
    the file holds, or a stream whose first frame does not decode.

    Raises:
        MissingMediaError, EmptyMediaError, DecodeError.
    """
    info = probe(path)
    size = Path(path).stat().st_size
    with _open(path) as c:
        streams = c.streams.video[:1] + c.streams.audio[:1]
        count = {s.index: 0 for s in streams}
        last_end = {s.index: 0.0 for s in streams}
        first_ok = {s.index: False for s in streams}
        for packet in c.demux(streams):
            if packet.size == 0:  # flush packet at end of stream
                continue
            s = packet.stream
            if packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size > size:
                raise DecodeError(path, f"truncated: {s.type} packet {count[s.index]} lies past the end of the file")
            count[s.index] += 1
            if packet.pts is not None and s.time_base:
                end = float((packet.pts + (packet.duration or 0)) * s.time_base)
                last_end[s.index] = max(last_end[s.index], end)
            if not first_ok[s.index] and s.codec_context.decode(packet):
                first_ok[s.index] = True
        for s in streams:
            # Decoders may buffer (B-frames, audio priming): flush before giving up.
            if not first_ok[s.index] and not s.codec_context.decode(None):
                raise DecodeError(path, f"{s.type} stream has no decodable frame")
            # The index (mp4 sample table) says how many packets exist: fewer means truncated.
            if s.frames and count[s.index] < s.frames:
                raise DecodeError(path, f"truncated: {s.type} has {count[s.index]} of {s.frames} packets")
            expected = _duration(c, s) or info.duration
            if not s.frames and expected and last_end[s.index] < 0.95 * expected - 0.1:
                raise DecodeError(
                    path, f"truncated: {s.type} packets end at {last_end[s.index]:.2f} s of {expected:.2f} s"
                )
        if not info.duration:  # the header does not say: the packets do (a 0-second file is 0 s long)
            info.duration = max(last_end.values(), default=0.0)
        return info


def load_audio(path: str | os.PathLike, sr: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 in [-1, 1] at ``sr`` Hz.

    Works on an audio file or on a video's audio track (same call).

    Args:
        path: audio or video file.
        sr: target sample rate.
        max_seconds: stop decoding after this many seconds (``None`` = all).

    Returns:
        1-D float32 array.

    Raises:
        MissingMediaError, EmptyMediaError (no samples), DecodeError (no audio stream, corrupt).
    """
    limit = None if max_seconds is None else int(round(max_seconds * sr))
    with _open(path) as c:
        if not c.streams.audio:
            raise DecodeError(path, "no audio stream")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks: list[np.ndarray] = []
        total = 0

        def take(frames) -> None:
            nonlocal total
            for f in frames:
                a = f.to_ndarray().reshape(-1)
                chunks.append(a)
                total += a.size

        for frame in c.decode(stream):
            take(resampler.resample(frame))
            if limit is not None and total >= limit:
                break
        else:
            take(resampler.resample(None))
    if total == 0:
        raise EmptyMediaError(path, "audio stream has no samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    if limit is not None:
        audio = audio[:limit]
    return np.clip(audio, -1.0, 1.0)


def _to_rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=int(size[0]), height=int(size[1]), format="rgb24").to_ndarray()


def _frame_time(frame, index: int, fps: float) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / fps if fps else float(index)


def load_frames(path: str | os.PathLike, num_frames: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Sample ``num_frames`` RGB frames uniformly over the video's duration.

    Sample points are the centres of ``num_frames`` equal time slices; each gets
    the decoded frame nearest to it (a clip with fewer frames repeats frames).
    Short clips are decoded front to back; clips longer than
    ``SEEK_THRESHOLD_S`` seek to each point instead.

    Args:
        path: video file.
        num_frames: frames to return (>= 1).
        size: ``(width, height)`` to resize to, or ``None`` for the native size.

    Returns:
        uint8 array ``(num_frames, H, W, 3)``.

    Raises:
        MissingMediaError, EmptyMediaError (no frames), DecodeError (no video stream, corrupt).
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    with _open(path) as c:
        if not c.streams.video:
            raise DecodeError(path, "no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = _duration(c, stream) or _duration(c)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        targets = start + (np.arange(num_frames) + 0.5) * (duration / num_frames)
        if duration <= 0:  # the container does not say (raw streams): pick by frame index
            decoded = list(c.decode(stream))
            picks = ((np.arange(num_frames) + 0.5) * len(decoded) / num_frames).astype(int)
            out = [_to_rgb(decoded[j], size) for j in picks] if decoded else [None]
        elif duration > SEEK_THRESHOLD_S:
            out = _frames_by_seek(c, stream, targets, size, fps)
        else:
            out = _frames_by_scan(c, stream, targets, size, fps)
    if any(o is None for o in out):
        raise EmptyMediaError(path, "video stream has no frames")
    return np.stack(out)


def _frames_by_scan(c, stream, targets, size, fps) -> list:
    """Decode every frame once; keep, for each target time, the nearest frame."""
    best_dt = np.full(len(targets), np.inf)
    out: list = [None] * len(targets)
    for i, frame in enumerate(c.decode(stream)):
        dt = np.abs(targets - _frame_time(frame, i, fps))
        better = dt < best_dt
        if better.any():
            rgb = _to_rgb(frame, size)
            for j in np.flatnonzero(better):
                out[j], best_dt[j] = rgb, dt[j]
    return out


def _frames_by_seek(c, stream, targets, size, fps) -> list:
    """Seek to the keyframe before each target and decode up to it."""
    out: list = []
    for t in targets:
        c.seek(int(t / stream.time_base), stream=stream, backward=True)
        chosen = None
        for i, frame in enumerate(c.decode(stream)):
            chosen = frame
            if _frame_time(frame, i, fps) >= t:
                break
        out.append(None if chosen is None else _to_rgb(chosen, size))
    return out
