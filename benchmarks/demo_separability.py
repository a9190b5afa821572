"""Modality separability of the demo corpus: simple features + logistic regression.

Trains on the train split (label-shifted: few sad/worried) and scores test and
unlabeled (true labels from unlabeled_truth.csv), per modality and fused.
Audio: log band energies (mean/std) + loudness stats; video: 24x24 gray face
crop (Haar) averaged over 4 frames, PCA 40; text: TF-IDF 1-2 grams.

Run: mer demo-data /tmp/demo1k --n-train 400 --n-unlabeled 400 --n-test 200
     python benchmarks/demo_separability.py /tmp/demo1k
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
SPLITS = ("test", "unlabeled")


def audio_features(path: Path) -> np.ndarray:
    """Mean and std of 24 log band energies, and loudness mean, std and 90th percentile."""
    from mer.corpus.media import load_audio

    audio = load_audio(path)
    frames = np.lib.stride_tricks.sliding_window_view(audio, 400)[::160]
    rms = np.log(np.sqrt((frames ** 2).mean(1)) + 1e-5)
    spec = np.abs(np.fft.rfft(frames * np.hanning(400), 1024, axis=1))
    edges, freqs = np.geomspace(60, 8000, 25), np.fft.rfftfreq(1024, 1 / 16000)
    bands = np.log(np.stack([spec[:, (freqs >= lo) & (freqs < hi)].sum(1)
                             for lo, hi in zip(edges[:-1], edges[1:])], 1) + 1e-4)
    return np.concatenate([bands.mean(0), bands.std(0), [rms.mean(), rms.std(), np.percentile(rms, 90)]])


def video_features(path: Path) -> np.ndarray:
    """The largest face of 4 frames as a 24x24 gray crop, averaged."""
    import cv2

    from mer.corpus.faces import largest_face_crop
    from mer.corpus.media import load_frames

    crops = [cv2.resize(cv2.cvtColor(largest_face_crop(x)[0], cv2.COLOR_RGB2GRAY), (24, 24))
             for x in load_frames(path, 4)]
    return np.mean(crops, 0).ravel() / 255.0


def scores(y: np.ndarray, pred: np.ndarray) -> str:
    return f"acc {accuracy_score(y, pred):.3f} wf1 {f1_score(y, pred, average='weighted'):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="a folder written by mer demo-data")
    root = parser.parse_args().corpus
    m = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    truth = pd.read_csv(root / "unlabeled_truth.csv")
    hidden = dict(zip(truth.sample_id, truth.label))
    y = np.array([label or hidden.get(s, "") for s, label in zip(m.sample_id, m.label)])
    masks = {split: (m.split == split).to_numpy() for split in ("train", *SPLITS)}
    train = masks["train"]

    start = time.time()
    audio = np.stack([audio_features(root / v) for v in m.video])
    video = np.stack([video_features(root / v) for v in m.video])
    print(f"features {time.time() - start:.1f} s")

    def fit_eval(x: np.ndarray, name: str, model) -> np.ndarray:
        probs = model.fit(x[train], y[train]).predict_proba(x)
        print(f"{name:8s} " + " | ".join(f"{s} {scores(y[masks[s]], model.classes_[probs[masks[s]].argmax(1)])}"
                                         for s in SPLITS))
        return probs

    def logistic():
        return LogisticRegression(max_iter=2000, C=1.0)

    p_audio = fit_eval(audio, "audio", make_pipeline(StandardScaler(), logistic()))
    p_video = fit_eval(video, "video", make_pipeline(StandardScaler(), PCA(40, random_state=0), logistic()))
    text = TfidfVectorizer(ngram_range=(1, 2)).fit(m.text[train]).transform(m.text).toarray()
    p_text = fit_eval(text, "text", logistic())
    classes = np.array(sorted(set(y[train])))
    late = np.log(p_audio + 1e-6) + np.log(p_video + 1e-6) + np.log(p_text + 1e-6)
    for split in SPLITS:
        print(f"fusion(late, sum log p) {split} {scores(y[masks[split]], classes[late[masks[split]].argmax(1)])}")
    early = np.concatenate([StandardScaler().fit(audio[train]).transform(audio),
                            PCA(40, random_state=0).fit(video[train]).transform(video), text * 3], 1)
    fit_eval(early, "early", make_pipeline(StandardScaler(), logistic()))
    audio_model = make_pipeline(StandardScaler(), logistic()).fit(audio[train], y[train])
    print("audio confusion (test, rows=true)", LABELS)
    print(confusion_matrix(y[masks["test"]], audio_model.predict(audio[masks["test"]]), labels=LABELS))


if __name__ == "__main__":
    main()
