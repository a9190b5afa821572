"""Speech recognition on real speech: word error rate, and what ASR transcripts cost the models.

A demo corpus whose clips' audio is their transcript spoken by espeak-ng
(``mer demo-data --speech``; Debian's ``espeak-ng`` package) is transcribed by
PocketSphinx (the recogniser whose model ships in its PyPI wheel; no Whisper
weights can be downloaded here) through the ``asr`` stage. Then, on the same
stored audio and video features:

* WER of the transcripts against the manifest's text (lower-cased, punctuation
  removed; ``jiwer``), over every clip, with the no-speech share;
* test weighted F1 (mean +- std over seeds) and the F1 of worried and sad of
  the text-only model (linear probe on minilm) and the fused model (AGT on
  logmel + frames + minilm), trained and tested on the true transcripts
  (``source: manifest``) vs on ASR transcripts (``source: asr``).

No setting is chosen here: both arms run the same recipe, so the test split
only measures the gap. Run: ``python benchmarks/asr_quality.py [--n-train 240]
[--n-test 120] [--seeds 0 1 2] [--work /tmp/mer_asr]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

FOCUS = ("worried", "sad")
ASR = {"engine": "pocketsphinx"}


def job_for(corpus: Path, work: Path, name: str, encoders: dict, model: str, seeds: list[int]):
    from mer.config import job_from_dict

    return job_from_dict({
        "name": name, "manifest": str(corpus / "manifest.csv"), "store": str(work / "store"),
        "run_dir": str(work / f"run_{name}"), "encoders": encoders, "stages": ["validate", "extract", "train"],
        "train": {"model": model, "baseline": None, "seeds": seeds},
    })


def cell(run_dir: Path, model: str) -> str:
    """``waf mean +- std | F1 worried | F1 sad`` (percent) of a run's test split."""
    from mer.runfolder import RunFolder

    test = RunFolder(run_dir).read("train.json")["systems"][model]["test"]
    show = [f"{np.mean(test['waf']) * 100:.1f} +- {np.std(test['waf'], ddof=1) * 100:.1f}"]
    show += [f"{np.mean(test[f'f1_{c}']) * 100:.1f}" for c in FOCUS]
    return " | ".join(show)


def word_error_rate(manifest: Path, store: str) -> tuple[float, float, int]:
    """WER of the stored transcripts against the manifest's text, mean no-speech share, clips."""
    import jiwer
    import pandas as pd

    from mer.config import AsrSpec
    from mer.encoders.versions import asr_version
    from mer.store import open_store

    spec = AsrSpec(**ASR)
    found = open_store(store).read_transcripts(spec.engine, asr_version(spec)).set_index("sample_id")
    truth = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("sample_id")["text"]
    truth = truth[truth.str.strip() != ""]
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    hyp = found["text"].reindex(truth.index).fillna("").tolist()
    rate = jiwer.wer(truth.tolist(), hyp, reference_transform=norm, hypothesis_transform=norm)
    return rate, float(found["no_speech_prob"].mean()), len(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mer_asr_quality"))
    args = parser.parse_args()

    from mer.corpus.demo import make_demo_corpus
    from mer.corpus.speech import speak_manifest
    from mer.runner import ensure_ray, run_job

    corpus = args.work / "corpus"
    if not (corpus / "manifest.csv").exists():
        make_demo_corpus(corpus, n_train=args.n_train, n_unlabeled=0, n_test=args.n_test, seed=7)
        speak_manifest(corpus / "manifest.csv")
    ensure_ray()
    rows = []
    for source in ("manifest", "asr"):
        text = {"alias": "minilm", "source": source, **({"asr": ASR} if source == "asr" else {})}
        start = time.perf_counter()
        run_job(job_for(corpus, args.work, f"fused_{source}", {"audio": "logmel", "video": "frames", "text": text},
                        "agt", args.seeds), echo=print)
        seconds = time.perf_counter() - start
        run_job(job_for(corpus, args.work, f"text_{source}", {"text": text}, "linear", args.seeds), echo=lambda _: None)
        rows.append((source, cell(args.work / f"run_text_{source}", "linear"),
                     cell(args.work / f"run_fused_{source}", "agt"), seconds))
    rate, no_speech, clips = word_error_rate(corpus / "manifest.csv", str(args.work / "store"))
    print(f"\nPocketSphinx 5.1.1 (en-us) on espeak-ng speech: WER {rate * 100:.1f} % over {clips} clips "
          f"(mean no-speech share {no_speech:.2f})")
    print(f"\ntest split of {args.n_test} clips, seeds {args.seeds}: weighted F1 mean +- std | F1 worried | F1 sad")
    print("| text source | text only (linear, minilm) | F1 worried | F1 sad | fused (AGT, logmel + frames + minilm) "
          "| F1 worried | F1 sad | fused run (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for source, alone, fused, seconds in rows:
        print(f"| {source} | {alone} | {fused} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
