"""Modality separability of the demo corpus: simple features + logistic regression.

Trains on the train split (label-shifted: few sad/worried) and scores test and
unlabeled (true labels from unlabeled_truth.csv), per modality and fused.
Audio: log band energies (mean/std) + loudness stats; video: 24x24 gray face
crop (Haar) averaged over 4 frames, PCA 40; text: TF-IDF 1-2 grams.

Run: mer demo-data /tmp/demo1k --n-train 400 --n-unlabeled 400 --n-test 200
     python benchmarks/demo_separability.py /tmp/demo1k
"""
import sys, time, numpy as np, pandas as pd
from pathlib import Path
from mer.corpus.media import load_audio, load_frames
from mer.corpus.faces import largest_face_crop
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
import cv2

root = Path(sys.argv[1]); m = pd.read_csv(root / "manifest.csv", keep_default_na=False)
truth = pd.read_csv(root / "unlabeled_truth.csv"); lab = dict(zip(truth.sample_id, truth.label))
m["y"] = [l or lab.get(s, "") for s, l in zip(m.sample_id, m.label)]

def audio_feats(path):
    a = load_audio(path)
    fr = np.lib.stride_tricks.sliding_window_view(a, 400)[::160]
    rms = np.log(np.sqrt((fr ** 2).mean(1)) + 1e-5)
    spec = np.abs(np.fft.rfft(fr * np.hanning(400), 1024, axis=1))
    mel_edges = np.geomspace(60, 8000, 25); f = np.fft.rfftfreq(1024, 1 / 16000)
    mel = np.stack([spec[:, (f >= lo) & (f < hi)].sum(1) for lo, hi in zip(mel_edges[:-1], mel_edges[1:])], 1)
    lm = np.log(mel + 1e-4)
    return np.concatenate([lm.mean(0), lm.std(0), [rms.mean(), rms.std(), np.percentile(rms, 90)]])

def video_feats(path):
    fr = load_frames(path, 4)
    crops = [cv2.resize(cv2.cvtColor(largest_face_crop(x)[0], cv2.COLOR_RGB2GRAY), (24, 24)) for x in fr]
    return np.mean(crops, 0).ravel() / 255.0

t = time.time()
A = np.stack([audio_feats(root / v) for v in m.video]); V = np.stack([video_feats(root / v) for v in m.video])
print("features %.1f s" % (time.time() - t))
tr = (m.split == "train").values; te = (m.split == "test").values; un = (m.split == "unlabeled").values
y = m.y.values
def fit_eval(X, name, model):
    model.fit(X[tr], y[tr]); P = model.predict_proba(X); res = {}
    for sn, mask in (("test", te), ("unlabeled", un)):
        pred = model.classes_[P[mask].argmax(1)]
        res[sn] = (accuracy_score(y[mask], pred), f1_score(y[mask], pred, average="weighted"))
    print(f"{name:8s} test acc {res['test'][0]:.3f} wf1 {res['test'][1]:.3f} | unlabeled acc {res['unlabeled'][0]:.3f} wf1 {res['unlabeled'][1]:.3f}")
    return P, model.classes_
lr = lambda: LogisticRegression(max_iter=2000, C=1.0)
Pa, cls = fit_eval(A, "audio", make_pipeline(StandardScaler(), lr()))
Pv, _ = fit_eval(V, "video", make_pipeline(StandardScaler(), PCA(40, random_state=0), lr()))
tf = TfidfVectorizer(ngram_range=(1, 2)).fit(m.text[tr]); T = tf.transform(m.text).toarray()
Pt, _ = fit_eval(T, "text", lr())
for name, P in (("fusion(late,sum log p)", np.log(Pa + 1e-6) + np.log(Pv + 1e-6) + np.log(Pt + 1e-6)),):
    for sn, mask in (("test", te), ("unlabeled", un)):
        pred = cls[P[mask].argmax(1)]
        print(f"{name} {sn} acc {accuracy_score(y[mask], pred):.3f} wf1 {f1_score(y[mask], pred, average='weighted'):.3f}")
X = np.concatenate([StandardScaler().fit(A[tr]).transform(A), PCA(40, random_state=0).fit(V[tr]).transform(V), T * 3], 1)
fit_eval(X, "early", make_pipeline(StandardScaler(), lr()))
from sklearn.metrics import confusion_matrix
m_a = make_pipeline(StandardScaler(), lr()).fit(A[tr], y[tr])
labs = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
print("audio confusion (test, rows=true)", labs)
print(confusion_matrix(y[te], m_a.predict(A[te]), labels=labs))
