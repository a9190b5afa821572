"""A small synthetic corpus in exactly the organisers' layout (``mer demo-data OUT --layout mer2025|mer2024``).

The same clips, speakers and label shift as ``mer demo-data`` (:mod:`mer.corpus.demo`),
written the way the MER2025 / MER2024 releases are: the folder and column
names of :mod:`mer.corpus.release`, clip names ``sample_00000000``, Chinese and
English transcripts of the same sentence, and a list of candidate clips. So
``mer corpus import`` and the whole path to a submission are tested without
the real data. The demo's test clips are the candidates; their labels, which
the organisers keep, are written to ``track1_test_dis.csv`` (``name,discrete``,
the file their ``score_calculation`` reads) so a submission can be scored, and
every unlabeled clip's label to ``unlabeled_truth.csv`` (for pseudo-label
accuracy). Neither file is read by ``mer corpus import``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mer.corpus.demo import plan_corpus, render_all
from mer.corpus.release import LAYOUT

#: What the organisers keep: the candidates' labels (MERTools' evaluation reads ``name,discrete``).
HIDDEN_LABELS = "track1_test_dis.csv"
HIDDEN_TRUTH = "unlabeled_truth.csv"
#: MER2024's release has no candidate list in MERTools; the demo writes one for ``--candidates``.
MER2024_CANDIDATES = "candidates.csv"


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_release_corpus(out: str | os.PathLike, layout: str = "mer2025", n_train: int = 240, n_unlabeled: int = 240,
                        n_test: int = 120, seed: int = 0, workers: int | None = None) -> Path:
    """Write a release-layout corpus under ``out``; returns ``out``.

    Args:
        layout: ``mer2025`` (video/, audio/ 16 kHz wav, subtitle_chieng.csv,
            track1_train_disdim.csv, track_all_candidates.csv) or ``mer2024``
            (video-labeled/, video-unlabeled-with-test2noise/, label-disdim.csv,
            label-transcription.csv).
        n_train, n_unlabeled, n_test: labeled clips, unlabeled clips, and
            candidates (unlabeled clips whose labels go to ``track1_test_dis.csv``).
        seed: same seed, same corpus.
        workers: rendering processes.
    """
    spec = LAYOUT[layout]
    out = Path(out)
    plan = plan_corpus(n_train, n_unlabeled, n_test, seed)
    names = {clip.sample_id: f"sample_{i:08d}" for i, (clip, _, _) in enumerate(plan)}
    jobs = []
    for clip, split, _ in plan:
        folder = spec.labeled_videos if split == "train" or spec.other_videos is None else spec.other_videos
        wav = str(out / spec.audio / f"{names[clip.sample_id]}.wav") if spec.audio else None
        jobs.append((clip, str(out / folder / f"{names[clip.sample_id]}.mp4"), wav))
    for folder in {Path(path).parent for _, path, _ in jobs} | ({out / spec.audio} if spec.audio else set()):
        folder.mkdir(parents=True, exist_ok=True)
    render_all(jobs, workers)
    name_of = lambda clip: names[clip.sample_id]  # noqa: E731
    subtitles = "label-transcription.csv" if layout == "mer2024" else spec.subtitles[0]
    _write_csv(out / subtitles, ["name", "chinese", "english"],
               [[name_of(c), text["chinese"], text["english"]] for c, _, text in plan])
    _write_csv(out / spec.labels, ["name", "discrete"], [[name_of(c), c.emotion] for c, s, _ in plan if s == "train"])
    candidates = [[name_of(c)] for c, s, _ in plan if s == "test"]
    _write_csv(out / (spec.candidates or MER2024_CANDIDATES), ["name"], candidates)
    _write_csv(out / HIDDEN_LABELS, ["name", "discrete"], [[name_of(c), c.emotion] for c, s, _ in plan if s == "test"])
    _write_csv(out / HIDDEN_TRUTH, ["sample_id", "label"], [[name_of(c), c.emotion] for c, s, _ in plan if s != "train"])
    return out
