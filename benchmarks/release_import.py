"""``mer corpus import mer2025`` at the release's size: 132,171 clips, then validation without decoding.

Writes MER2025's layout with every list at its real length (``video/`` and
``audio/`` with a one-byte stand-in file per clip, ``subtitle_chieng.csv`` with a
Chinese and an English line per clip, ``track1_train_disdim.csv`` with 7,369
labels, ``track_all_candidates.csv`` with 20,000 names), then runs the real
command, ``mer corpus import mer2025 ROOT --out ... --no-media`` (validation
checks that each file exists and is not empty, without decoding it), in a child process: wall seconds and the
child's peak RSS. The same at one tenth of the clips: memory must not grow
with the release (target: peak within 1.3x).

Run: .venv/bin/python benchmarks/release_import.py [--work /tmp/mer_import]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COUNTS = {"clips": 132171, "train": 7369, "candidates": 20000}
LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def write_release(root: Path, scale: float) -> int:
    """MER2025's layout at ``scale`` of its row counts, media as one-byte files; returns the clip count."""
    n = int(round(COUNTS["clips"] * scale))
    rng = np.random.default_rng(0)
    names = [f"sample_{i:08d}" for i in range(n)]
    for folder, ext in (("video", ".mp4"), ("audio", ".wav")):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / f"{name}{ext}").write_bytes(b"\0")
    with open(root / "subtitle_chieng.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["name", "chinese", "english"])
        writer.writerows([name, "我今天真的很开心，谢谢你。", "I am really happy today, thank you."] for name in names)
    labeled = rng.choice(n, int(round(COUNTS["train"] * scale)), replace=False)
    with open(root / "track1_train_disdim.csv", "w", encoding="utf-8") as f:
        f.write("name,discrete\n" + "".join(f"{names[i]},{LABELS[i % 6]}\n" for i in labeled))
    rest = np.setdiff1d(np.arange(n), labeled)
    chosen = rng.choice(rest, int(round(COUNTS["candidates"] * scale)), replace=False)
    with open(root / "track_all_candidates.csv", "w", encoding="utf-8") as f:
        f.write("name\n" + "".join(f"{names[i]}\n" for i in chosen))
    return n


def run_import(root: Path) -> dict:
    """The CLI in a child process: seconds and that child's own peak RSS (MB, from its rusage at exit)."""
    child = ("import atexit, resource, sys; atexit.register(lambda: print('MAXRSS_KB', "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
             "from mer.cli import main; sys.argv = ['mer', *sys.argv[1:]]; main()")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", child, "corpus", "import", "mer2025", str(root),
                           "--out", str(root / "manifest.csv"), "--no-media"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    peak = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    lines = [line for line in done.stdout.splitlines() if line.startswith("wrote ")]
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak[-1] / 1024) if peak else None,
            "summary": lines[0] if lines else done.stdout[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mer_import"))
    args = parser.parse_args()
    results = {}
    for scale in (0.1, 1.0):
        root = args.work / f"scale_{scale:g}"
        if root.exists():
            shutil.rmtree(root)
        start = time.perf_counter()
        n = write_release(root, scale)
        written = time.perf_counter() - start
        results[scale] = {"clips": n, "write_layout_s": round(written, 1), **run_import(root)}
        print(f"scale {scale:g}: {results[scale]}", flush=True)
        shutil.rmtree(root)
    small, big = results[0.1], results[1.0]
    print("\n| clips | import + validate (no decoding) s | clips/s | peak RSS MB |\n|---|---|---|---|")
    for r in (small, big):
        print(f"| {r['clips']:,} | {r['seconds']} | {r['clips'] / r['seconds']:,.0f} | {r['peak_rss_mb']} |")
    if small["peak_rss_mb"] and big["peak_rss_mb"]:
        print(f"peak RSS, all clips vs one tenth: {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x (target <= 1.3x)")
    print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
