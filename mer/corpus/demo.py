"""A synthetic MER-SEMI-like corpus of real mp4 clips: a drawn talking face, a voice, a transcript.

Every clip is an H.264 + AAC mp4 (~2 s, 112x112, 12 fps) written with PyAV, so the
whole pipeline (decode, face crop, encoders, store, training) runs on real media
with no download. The emotion shows in three modalities with different
reliability, as in MER2024 where audio is the strongest single modality:

- voice (most reliable): pitch level and range, loudness, tempo, tremolo and
  contour follow the emotion (angry loud and fast, sad low and slow, happy high
  and varied, worried trembling, surprise rising, neutral flat), on top of
  speaker differences (sex, pitch, vocal tract, rate) and background noise;
- face: mouth curve, brows and eye opening follow the emotion, but on some
  clips the face is neutral or partly occluded;
- text: templated sentences per emotion, but part of the emotional clips carry
  neutral wording, and sad/worried and angry/surprise share some sentences.

Label shift like MER-SEMI: worried and sad are rare in train (5 % each) and
common in test and unlabeled (25 % each); the unlabeled split follows the test
distribution and its true labels go to ``unlabeled_truth.csv`` (never into the
manifest). Our choices (the paper has no such corpus): the rates above, 16
speakers, the parameter tables below.

``style="heldout"`` draws a corpus that nothing in mer was tuned on, for the
generalization check (``benchmarks/generalization.py``): four of the 16
speakers never appear in train, each speaker expresses each emotion with its
own strength per voice parameter, the room is noisier and reverberant,
transcripts describe situations without emotion words, and faces are less
expressive and more often neutral or occluded.

Deterministic for a seed: the manifest bytes and the decoded audio and frames
are the same on every run (x264 runs single-threaded per clip; clips are
spread over processes, each from its own seed).
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from mer.config import MER2024_LABELS

SR = 16000
FPS = 12
SECONDS = 2.0
SIZE = 112
N_SPEAKERS = 16

TRAIN_PRIOR = {"neutral": 0.225, "angry": 0.225, "happy": 0.225, "sad": 0.05, "worried": 0.05, "surprise": 0.225}
TEST_PRIOR = {"neutral": 0.125, "angry": 0.125, "happy": 0.125, "sad": 0.25, "worried": 0.25, "surprise": 0.125}

#: Voice per emotion: pitch factor, per-syllable pitch spread (semitones), level
#: (dBFS RMS), syllables per second, spectral tilt (higher = darker), contour
#: slope over the clip (semitones), tremolo depth (semitones, ~6 Hz; loudness
#: shakes at the same rate by 35 % of it).
VOICE = {
    "neutral": dict(pitch=1.00, spread=0.6, level=-22.0, rate=4.0, tilt=1.3, slope=-0.5, tremolo=0.0),
    "angry": dict(pitch=1.18, spread=1.5, level=-13.0, rate=5.8, tilt=0.8, slope=-1.0, tremolo=0.0),
    "happy": dict(pitch=1.32, spread=4.0, level=-17.0, rate=4.8, tilt=1.1, slope=0.0, tremolo=0.0),
    "sad": dict(pitch=0.84, spread=0.5, level=-28.0, rate=2.6, tilt=1.8, slope=-2.5, tremolo=0.0),
    "worried": dict(pitch=1.12, spread=1.2, level=-25.0, rate=4.8, tilt=1.5, slope=1.0, tremolo=1.2),
    "surprise": dict(pitch=1.22, spread=1.5, level=-17.0, rate=3.8, tilt=1.1, slope=7.0, tremolo=0.0),
}

#: Face per emotion: mouth curve (+ smile), mouth opening, brow inner tilt
#: (+ inner ends up), brow raise, eye opening.
FACE = {
    "neutral": dict(curve=0.0, mouth_open=0.0, tilt=0.0, raise_=0.0, eye=1.0),
    "angry": dict(curve=-0.35, mouth_open=0.1, tilt=-1.0, raise_=-0.4, eye=0.55),
    "happy": dict(curve=1.0, mouth_open=0.25, tilt=0.0, raise_=0.2, eye=0.8),
    "sad": dict(curve=-1.0, mouth_open=0.0, tilt=0.9, raise_=0.0, eye=0.6),
    "worried": dict(curve=-0.35, mouth_open=0.1, tilt=1.0, raise_=0.5, eye=1.25),
    "surprise": dict(curve=0.0, mouth_open=1.0, tilt=0.0, raise_=0.7, eye=1.3),
}

#: Vowel formants (F1, F2, F3 in Hz) of a typical adult male tract.
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]])

TEXT = {
    "neutral": [],
    "angry": [
        "I told you {n} times and you still ignored me!",
        "This is unacceptable, who moved my {o}?",
        "Stop it right now, I am sick of your excuses!",
        "How dare you take my {o} without asking!",
        "You broke the {o} again, I am furious!",
        "I can't believe you did this to me.",
    ],
    "happy": [
        "That's wonderful news, I love the {o}!",
        "We won! This is the best {t} ever!",
        "Thank you so much, I am really glad you came.",
        "Haha, that was great, let's do it again {t}!",
        "I'm so happy we finally got the {o}.",
    ],
    "sad": [
        "I miss her so much since she left {t}.",
        "Nobody came, I spent {t} alone again.",
        "It's over, I lost the {o} and everything with it.",
        "I feel so empty, nothing matters anymore.",
        "I don't know what to do anymore.",
    ],
    "worried": [
        "What if the {o} isn't ready by {t}?",
        "I'm afraid something bad happened to him.",
        "Are you sure it's safe? I have a bad feeling.",
        "I keep thinking we will miss the deadline {t}.",
        "I don't know what to do anymore.",
    ],
    "surprise": [
        "Wait, what? You bought a {o}?",
        "No way! Is that really you?",
        "I had no idea you were coming {t}!",
        "Really? The {o} was here all along?",
        "I can't believe you did this to me.",
    ],
}
NEUTRAL_TEXT = [
    "The {o} is on the table next to the door.",
    "I will take the bus {t} at eight.",
    "We need to buy milk and bread for {t}.",
    "He said the meeting moved to room {n}.",
    "Please send me the {o} when you can.",
    "The train leaves from platform {n}.",
    "I read the report about the {o} {t}.",
    "Let's meet at the corner {t}.",
]
SLOTS = dict(
    o=["letter", "car", "ticket", "phone", "garden", "house", "bike", "contract", "cake", "camera"],
    t=["tonight", "tomorrow", "this morning", "on Friday", "next week", "yesterday"],
    n=["two", "three", "five", "seven", "ten", "twelve"],
)

#: The same sentences in Chinese (the MER releases' first language), entry by entry, so one draw gives
#: both transcripts (``mer demo-data --layout``); the situations of the heldout style have none.
TEXT_ZH = {
    "neutral": [],
    "angry": ["我跟你说了{n}遍，你还是不理我！", "这太过分了，谁动了我的{o}？", "马上住手，我受够了你的借口！",
              "你怎么敢不问一声就拿走我的{o}！", "你又把{o}弄坏了，我气死了！", "我不敢相信你这样对我。"],
    "happy": ["太好了，我太喜欢这个{o}了！", "我们赢了！这是最棒的{t}！", "太谢谢你了，你能来我真高兴。",
              "哈哈，太好玩了，{t}我们再来一次！", "我们终于拿到{o}了，我好开心。"],
    "sad": ["她{t}走了以后，我好想她。", "没有人来，{t}我又是一个人过的。", "全完了，我丢了{o}，也丢了一切。",
            "我觉得好空虚，什么都不重要了。", "我不知道该怎么办了。"],
    "worried": ["要是{t}之前{o}还没准备好怎么办？", "我怕他出了什么事。", "你确定安全吗？我有种不好的预感。",
                "我一直担心我们{t}会错过截止日期。", "我不知道该怎么办了。"],
    "surprise": ["等等，什么？你买了一个{o}？", "不会吧！真的是你吗？", "我完全不知道你{t}要来！",
                 "真的吗？{o}一直都在这儿？", "我不敢相信你这样对我。"],
}
NEUTRAL_TEXT_ZH = ["{o}在门边的桌子上。", "我{t}八点坐公交车。", "我们得为{t}买些牛奶和面包。", "他说会议改到{n}号房间了。",
                   "方便的时候请把{o}发给我。", "火车从{n}号站台出发。", "我{t}看了关于{o}的报告。", "我们{t}在街角见面吧。"]
SLOTS_ZH = dict(
    o=["信", "车", "票", "手机", "花园", "房子", "自行车", "合同", "蛋糕", "相机"],
    t=["今晚", "明天", "今天早上", "星期五", "下周", "昨天"],
    n=["两", "三", "五", "七", "十", "十二"],
)

#: Share of emotional clips whose transcript is neutral-worded, and of clips
#: whose face is neutral or occluded: the reasons fusion beats each modality.
P_NEUTRAL_TEXT = 0.35
P_NEUTRAL_FACE = 0.25
P_OCCLUDED_FACE = 0.12


SITUATIONS = {
    "angry": [
        "Someone scratched my {o} and drove off without a word.",
        "They cancelled the {o} order for the third time {t}.",
        "He took the credit for my work in front of everyone.",
        "The neighbours played drums until three in the morning again.",
    ],
    "happy": [
        "My sister is getting married {t} and I am the witness.",
        "We finally moved into the new house with the {o}.",
        "The whole team came to my birthday {t}.",
        "I passed the driving test on the first try.",
    ],
    "sad": [
        "The dog we had for fifteen years died {t}.",
        "My best friend moved to another country {t}.",
        "The {o} my grandmother gave me was thrown away.",
        "Nobody answered my letters this year.",
    ],
    "worried": [
        "The doctor wants to see the scan again {t}.",
        "The rent goes up next month and the {o} is broken.",
        "She has not called since the storm {t}.",
        "The company announces layoffs {t}.",
    ],
    "surprise": [
        "A stranger paid for my {o} at the counter.",
        "The old school friend I lost knocked on the door {t}.",
        "The exam was moved to {t} without notice.",
        "I found a {o} in the garden that was not there before.",
    ],
}


@dataclass(frozen=True)
class Style:
    """How a corpus is drawn: ``demo`` (what mer's defaults grew up with) or ``heldout``.

    Attributes:
        name: ``demo`` or ``heldout``.
        noise_dbfs: range of the room noise level.
        reverb_s: range of the reverberation decay time (0 = dry).
        expression_jitter: spread of a speaker's own strength per emotion and voice
            parameter (0 = every speaker expresses an emotion the same way).
        unseen_speakers: speakers (the last ones) that appear only in unlabeled and test.
        text: ``templates`` (emotion words) or ``situations`` (events, no emotion words).
        face_intensity: range of the face expression strength.
        p_neutral_face, p_occluded_face: share of clips with a neutral or occluded face.
    """

    name: str = "demo"
    noise_dbfs: tuple[float, float] = (-48.0, -36.0)
    reverb_s: tuple[float, float] = (0.0, 0.0)
    expression_jitter: float = 0.0
    unseen_speakers: int = 0
    text: str = "templates"
    face_intensity: tuple[float, float] = (0.5, 1.0)
    p_neutral_face: float = P_NEUTRAL_FACE
    p_occluded_face: float = P_OCCLUDED_FACE


STYLES = {
    "demo": Style(),
    "heldout": Style(name="heldout", noise_dbfs=(-36.0, -26.0), reverb_s=(0.15, 0.5), expression_jitter=0.35,
                     unseen_speakers=4, text="situations", face_intensity=(0.3, 0.9), p_neutral_face=0.3,
                     p_occluded_face=0.2),
}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: voice and look."""

    f0: float
    tract: float
    rate: float
    level: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    scale: float


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; ``seed`` drives its random details."""

    sample_id: str
    emotion: str
    speaker: Speaker
    seed: int
    face_mode: str = "expressive"  # expressive | neutral | occluded
    voice_intensity: float = 1.0
    face_intensity: float = 1.0
    style: Style = STYLES["demo"]
    speaker_id: str = ""  # the speaker's index in the corpus (the heldout manifest's ``group``)


def make_speakers(seed: int, n: int = N_SPEAKERS) -> list[Speaker]:
    """Speakers of both sexes with their own pitch, vocal tract, rate, loudness and look."""
    rng = np.random.default_rng([seed, 7])
    speakers = []
    for i in range(n):
        female = i % 2 == 1
        tone = rng.uniform(140, 245)
        skin = np.clip(tone * np.array([1.0, rng.uniform(0.72, 0.85), rng.uniform(0.55, 0.72)]), 0, 255).astype(int)
        speakers.append(
            Speaker(
                f0=float(rng.uniform(185, 235) if female else rng.uniform(95, 135)),
                tract=float(rng.uniform(1.08, 1.2) if female else rng.uniform(0.92, 1.02)),
                rate=float(rng.uniform(0.85, 1.15)),
                level=float(rng.uniform(-3, 3)),
                skin=tuple(int(v) for v in skin),
                hair=tuple(int(v) for v in rng.integers(15, 90, 3)),
                background=tuple(int(v) for v in rng.integers(20, 110, 3)),
                scale=float(rng.uniform(0.88, 1.05)),
            )
        )
    return speakers


def _mix(emotion: str, table: dict, intensity: float) -> dict:
    """Interpolate an emotion's parameters toward neutral (intensity 0 = neutral)."""
    neutral, target = table["neutral"], table[emotion]
    return {k: neutral[k] + intensity * (target[k] - neutral[k]) for k in target}


def synth_voice(spec: ClipSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic + formant synthesis with syllable envelopes.

    Returns:
        ``(audio, envelope)``: float32 samples at ``SR`` and the syllable
        envelope (0..1, same length) that also drives the mouth.
    """
    p = _mix(spec.emotion, VOICE, spec.voice_intensity)
    style = spec.style
    if style.expression_jitter:
        # This speaker's own way of showing this emotion: each parameter's distance from
        # neutral scaled by a factor fixed per (speaker, emotion).
        own = np.random.default_rng([int(spec.speaker.f0 * 1000), MER2024_LABELS.index(spec.emotion)])
        factor = np.clip(1 + style.expression_jitter * own.normal(size=len(p)), 0.2, 2.0)
        p = {k: VOICE["neutral"][k] + f * (v - VOICE["neutral"][k]) for (k, v), f in zip(p.items(), factor)}
    n = int(SECONDS * SR)
    t = np.arange(n) / SR
    rate = p["rate"] * spec.speaker.rate * rng.uniform(0.9, 1.1)
    # Syllables: onsets with jittered gaps, each a raised-sine envelope with a vowel and a pitch target.
    onsets, start = [], rng.uniform(0.05, 0.2)
    while start < SECONDS - 0.15:
        onsets.append(start)
        start += rng.uniform(0.75, 1.25) / rate
    envelope = np.zeros(n)
    semis = np.zeros(n)
    formants = np.zeros((n, 3))
    length = 0.72 / rate
    for k, onset in enumerate(onsets):
        i0, i1 = int(onset * SR), min(n, int((onset + length) * SR))
        x = np.linspace(0, 1, i1 - i0, endpoint=False)
        envelope[i0:i1] += rng.uniform(0.7, 1.0) * np.sin(np.pi * x) ** 0.7
        semis[i0:i1] = rng.normal(0.0, p["spread"])
        formants[i0:i1] = VOWELS[rng.integers(len(VOWELS))] * spec.speaker.tract
    envelope = np.clip(envelope, 0, 1)
    # Pitch: speaker x emotion level, per-syllable targets smoothed (on a 2.5 ms grid, then
    # interpolated: cheaper than smoothing every sample), a global slope, tremolo.
    hop = 40
    kernel = np.hanning(24)
    coarse = np.convolve(semis[::hop], kernel / kernel.sum(), mode="same")
    semis = np.interp(t, t[::hop], coarse)
    trembling = np.sin(2 * np.pi * rng.uniform(5.5, 7.5) * t)
    semis += p["slope"] * (t / SECONDS) + p["tremolo"] * trembling
    f0 = spec.speaker.f0 * p["pitch"] * rng.uniform(0.96, 1.04) * 2.0 ** (semis / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    n_harm = int(3800 // f0.min())
    k = np.arange(1, n_harm + 1)[:, None]
    # Harmonic amplitudes change slowly: compute them on the same grid, hold in between.
    freqs = k * f0[None, ::hop]
    gain = sum(np.exp(-0.5 * ((freqs - formants[None, ::hop, j]) / bw) ** 2) for j, bw in enumerate((90, 120, 160)))
    amps = np.repeat((gain + 0.03) * k ** (-p["tilt"]) * (freqs < 3900), hop, axis=1)[:, :n]
    carriers = np.sin(k.astype(np.float32) * phase.astype(np.float32)[None, :])
    voiced = np.einsum("kn,kn->n", amps.astype(np.float32), carriers)
    # Consonant bursts at onsets, then scale the voice to its level and add background noise.
    burst = np.zeros(n)
    for onset in onsets:
        i0 = int(onset * SR)
        m = min(n - i0, int(0.025 * SR))
        burst[i0 : i0 + m] = rng.normal(0, 0.3, m) * np.linspace(1, 0, m)
    # A trembling voice shakes in loudness too.
    voice = voiced * envelope * (1 + 0.35 * p["tremolo"] * trembling) + burst
    active = envelope > 0.3
    rms = np.sqrt(np.mean(voice[active] ** 2)) if active.any() else 1.0
    level = p["level"] + spec.speaker.level + rng.uniform(-2, 2)
    voice *= 10 ** (level / 20) / rms
    white = rng.normal(0, 1, n)
    noise = white + np.cumsum(white) * 0.005  # room noise: white plus a low rumble
    noise -= noise.mean()
    if style.reverb_s[1] > 0:  # a room: the dry voice convolved with exponentially decaying noise
        decay = rng.uniform(*style.reverb_s)
        tail = np.arange(int(decay * SR)) / SR
        impulse = rng.normal(0, 1, len(tail)) * np.exp(-6.9 * tail / decay)
        impulse[0] = 1.0 / 0.3
        wet = np.convolve(voice, impulse * 0.3)[:n]
        voice = wet * np.sqrt(np.mean(voice**2) / (np.mean(wet**2) + 1e-12))
    noise *= 10 ** (rng.uniform(*style.noise_dbfs) / 20) / (np.std(noise) + 1e-9)
    audio = np.clip(voice + noise, -0.99, 0.99).astype(np.float32)
    return audio, envelope


def draw_face(spec: ClipSpec, rng: np.random.Generator, envelope: np.ndarray) -> np.ndarray:
    """Draw ``SECONDS * FPS`` RGB frames of a talking face; returns uint8 ``(T, H, W, 3)``.

    The face is drawn with the shading a Haar face detector keys on (dark brows
    and eyes over lighter cheeks, a nose shadow, a dark mouth), so
    ``mer.corpus.faces`` finds it as it would a photographed face.
    """
    import cv2

    intensity = 0.0 if spec.face_mode == "neutral" else spec.face_intensity
    p = _mix(spec.emotion, FACE, intensity)
    sp = spec.speaker
    n_frames = int(SECONDS * FPS)
    blink = set(rng.choice(n_frames, size=int(rng.integers(0, 2)), replace=False).tolist())
    drift = rng.uniform(-4, 4, 2)
    occluder = (int(rng.integers(0, 2)), tuple(int(v) for v in rng.integers(60, 200, 3)))
    frames = np.empty((n_frames, SIZE, SIZE, 3), np.uint8)
    skin = sp.skin
    shade = lambda f: tuple(int(c * f) for c in skin)  # noqa: E731 (a colour helper read inline)

    def ellipse(img, centre, axes, colour, start=0, end=360):
        cv2.ellipse(img, centre, axes, 0, start, end, colour, -1, cv2.LINE_AA)

    for i in range(n_frames):
        img = np.empty((SIZE, SIZE, 3), np.uint8)
        img[:] = sp.background
        talk = float(envelope[min(len(envelope) - 1, int(i / FPS * SR))])
        cx = int(SIZE / 2 + drift[0] * np.sin(i / 5) + rng.normal(0, 0.5))
        cy = int(SIZE / 2 + 3 + drift[1] * np.cos(i / 6) + rng.normal(0, 0.5))
        fw, fh = int(34 * sp.scale), int(44 * sp.scale)
        ellipse(img, (cx, cy), (fw, fh), skin)
        ellipse(img, (cx, cy - int(fh * 0.55)), (int(fw * 1.02), int(fh * 0.5)), sp.hair, 180, 360)
        ey = cy - int(fh * 0.12)
        eye = 0.1 if i in blink else p["eye"]
        for side in (-1, 1):
            x = cx + side * int(fw * 0.42)
            ellipse(img, (x, ey), (int(fw * 0.25), int(fh * 0.1)), shade(0.75))  # socket shadow
            ellipse(img, (x, ey), (int(fw * 0.17), max(1, int(fh * 0.07 * eye))), (235, 235, 235))
            cv2.circle(img, (x, ey), max(1, int(fh * 0.05 * min(eye, 1.1))), (30, 20, 15), -1, cv2.LINE_AA)
            by = ey - int(fh * (0.2 + 0.1 * p["raise_"]))
            inner = (cx + side * int(fw * 0.15), by - int(p["tilt"] * fh * 0.05))
            outer = (cx + side * int(fw * 0.65), by + int(p["tilt"] * fh * 0.03))
            cv2.line(img, inner, outer, (45, 35, 30), max(2, int(fh * 0.06)), cv2.LINE_AA)
        ny = cy + int(fh * 0.18)
        cv2.line(img, (cx, ey + 4), (cx - 2, ny), shade(0.8), 2, cv2.LINE_AA)
        cv2.ellipse(img, (cx, ny), (int(fw * 0.18), int(fh * 0.05)), 0, 0, 180, shade(0.45), 2, cv2.LINE_AA)
        my, mw = cy + int(fh * 0.45), int(fw * 0.42)
        opening = fh * 0.12 * min(1.0, p["mouth_open"] + 0.35 * talk)
        if opening > 1.5:
            ellipse(img, (cx, my), (int(mw * (0.9 - 0.3 * p["mouth_open"])), int(opening)), (70, 20, 30))
        xs = np.linspace(-1, 1, 21)
        # Image y grows downward: a positive curve puts the centre below the corners (a smile).
        ys = my + p["curve"] * fh * 0.12 * (1 - xs**2) - p["curve"] * fh * 0.06
        pts = np.stack([cx + xs * mw, ys], 1).astype(np.int32)
        cv2.polylines(img, [pts], False, (90, 30, 40), max(2, int(fh * 0.06)), cv2.LINE_AA)
        if spec.face_mode == "occluded":
            # A hand or mask over the mouth, or sunglasses over the eyes.
            if occluder[0] == 0:
                cv2.rectangle(img, (cx - fw, my - int(fh * 0.2)), (cx + fw, cy + fh), occluder[1], -1)
            else:
                glasses = (cx - int(fw * 0.8), ey - int(fh * 0.12)), (cx + int(fw * 0.8), ey + int(fh * 0.1))
                cv2.rectangle(img, *glasses, (20, 20, 20), -1)
        frames[i] = cv2.GaussianBlur(img, (3, 3), 0)
    return frames


def make_texts(emotion: str, rng: np.random.Generator, style: Style = STYLES["demo"]) -> dict[str, str | None]:
    """A transcript in English and Chinese from one draw: emotional wording (or a situation), or neutral wording on
    part of the emotional clips. ``chinese`` is None for the heldout style's situations."""
    table = SITUATIONS if style.text == "situations" else TEXT
    neutral = emotion == "neutral" or rng.random() < P_NEUTRAL_TEXT
    pool = NEUTRAL_TEXT if neutral else table[emotion]
    k = int(rng.integers(len(pool)))
    slots = {name: int(rng.integers(len(values))) for name, values in SLOTS.items()}
    english = pool[k].format(**{name: SLOTS[name][i] for name, i in slots.items()})
    chinese = None
    if table is TEXT:
        zh = NEUTRAL_TEXT_ZH if neutral else TEXT_ZH[emotion]
        chinese = zh[k].format(**{name: SLOTS_ZH[name][i] for name, i in slots.items()})
    return {"english": english, "chinese": chinese}


def write_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray, fps: int = FPS, sr: int = SR) -> None:
    """Write H.264 (yuv420p, libx264) video plus mono AAC audio to an mp4."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23", "threads": "1"})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=sr, layout="mono")
        sound.bit_rate = 48000
        sound.options = {"aac_coder": "fast"}  # the default two-loop coder costs 5x the time for no use here
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        step = 1024
        for start in range(0, len(audio), step):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + step], format="flt", layout="mono")
            frame.sample_rate, frame.pts = sr, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))


def render_clip(spec: ClipSpec, path: str | os.PathLike, wav: str | os.PathLike | None = None) -> None:
    """Synthesize the voice and the face of ``spec`` and write them as one mp4 (and the voice as a 16 kHz wav)."""
    # Separate streams: the face's motion and blinks do not depend on how many
    # random draws the voice of this emotion happened to take.
    audio, envelope = synth_voice(spec, np.random.default_rng([spec.seed, 0]))
    frames = draw_face(spec, np.random.default_rng([spec.seed, 1]), envelope)
    write_mp4(path, frames, audio)
    if wav is not None:
        from scipy.io import wavfile

        wavfile.write(wav, SR, (np.clip(audio, -1, 1) * 32767).astype(np.int16))


def _render_many(jobs: list[tuple[ClipSpec, str, str | None]]) -> int:
    for spec, path, wav in jobs:
        render_clip(spec, path, wav)
    return len(jobs)


def render_all(jobs: list[tuple[ClipSpec, str, str | None]], workers: int | None = None) -> None:
    """Render ``(spec, mp4 path, wav path or None)`` jobs over processes, with a progress bar."""
    from tqdm import tqdm

    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [jobs[i : i + 16] for i in range(0, len(jobs), 16)]
    with tqdm(total=len(jobs), desc="demo clips", unit="clip", disable=len(jobs) < 50) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                bar.update(_render_many(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(_render_many, chunks):
                    bar.update(done)


def _label_list(prior: dict, n: int, rng: np.random.Generator) -> list[str]:
    """Exactly ``n`` labels in the proportions of ``prior`` (largest remainder), shuffled."""
    quota = np.array([prior[lab] for lab in MER2024_LABELS]) * n
    counts = np.floor(quota).astype(int)
    for j in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[j] += 1
    labels = np.repeat(MER2024_LABELS, counts)
    return list(rng.permutation(labels))


def plan_corpus(n_train: int, n_unlabeled: int, n_test: int, seed: int, balanced_test: bool = False,
                style: str = "demo"):
    """Draw every clip's spec and transcript (cheap; no media).

    ``style`` names a :data:`STYLES` entry (``demo`` or ``heldout``).

    Returns:
        list of ``(spec, split, texts)`` in manifest order; ``texts`` is
        ``{"english": ..., "chinese": ...}`` (:func:`make_texts`).
    """
    if style not in STYLES:
        raise ValueError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")
    look = STYLES[style]
    rng = np.random.default_rng(seed)
    speakers = make_speakers(seed)
    seen = speakers[: len(speakers) - look.unseen_speakers]
    test_prior = {lab: 1 / len(MER2024_LABELS) for lab in MER2024_LABELS} if balanced_test else TEST_PRIOR
    plan = []
    splits = [("train", n_train, TRAIN_PRIOR), ("unlabeled", n_unlabeled, test_prior), ("test", n_test, test_prior)]
    index = 0
    for split, n, prior in splits:
        for emotion in _label_list(prior, n, rng):
            u = rng.random()
            face_mode = "neutral" if u < look.p_neutral_face else "expressive"
            if look.p_neutral_face <= u < look.p_neutral_face + look.p_occluded_face:
                face_mode = "occluded"
            pool = seen if split == "train" else speakers
            speaker = pool[int(rng.integers(len(pool)))]
            spec = ClipSpec(
                sample_id=f"demo_{index:05d}",
                emotion=str(emotion),
                speaker=speaker,
                speaker_id=f"speaker{speakers.index(speaker):02d}",
                seed=int(rng.integers(2**31)),
                face_mode=face_mode,
                voice_intensity=float(rng.uniform(0.55, 1.0)),
                face_intensity=float(rng.uniform(*look.face_intensity)),
                style=look,
            )
            plan.append((spec, split, make_texts(spec.emotion, rng, look)))
            index += 1
    return plan


def make_demo_corpus(
    out: str | os.PathLike,
    n_train: int = 240,
    n_unlabeled: int = 240,
    n_test: int = 120,
    seed: int = 0,
    balanced_test: bool = False,
    workers: int | None = None,
    style: str = "demo",
) -> Path:
    """Write ``out/manifest.csv``, ``out/media/*.mp4`` and ``out/unlabeled_truth.csv``.

    Args:
        out: output folder (created).
        n_train: labeled training clips (worried and sad rare).
        n_unlabeled: unlabeled clips (test distribution; labels only in unlabeled_truth.csv).
        n_test: labeled test clips (worried and sad common, or uniform with ``balanced_test``).
        seed: same seed, same corpus.
        balanced_test: every label equally common in test and unlabeled (no label shift).
        workers: processes rendering clips (default: CPU count, at most 4).
        style: ``demo`` or ``heldout`` (a corpus nothing was tuned on, see the module docstring).

    Returns:
        Path of the manifest.
    """
    out = Path(out)
    (out / "media").mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(n_train, n_unlabeled, n_test, seed, balanced_test, style)
    render_all([(spec, str(out / "media" / f"{spec.sample_id}.mp4"), None) for spec, _, _ in plan], workers)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        # heldout corpora say who speaks (the speaker-independent protocol: folds keep speakers apart)
        grouped = style == "heldout"
        w.writerow(["sample_id", "video", "audio", "text", "label", "split", *(["group"] if grouped else [])])
        for spec, split, texts in plan:
            label = "" if split == "unlabeled" else spec.emotion
            w.writerow([spec.sample_id, f"media/{spec.sample_id}.mp4", "", texts["english"], label, split,
                        *([spec.speaker_id] if grouped else [])])
    with open(out / "unlabeled_truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sample_id", "label"])
        w.writerows([spec.sample_id, spec.emotion] for spec, split, _ in plan if split == "unlabeled")
    return manifest
