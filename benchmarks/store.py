"""Feature-store benchmarks, each measured side by side in one run.

    .venv/bin/python benchmarks/store.py            # full sizes (a few minutes)
    .venv/bin/python benchmarks/store.py --quick    # small sizes (< 1 minute)

(a) read N x 1024 float32 into numpy: store (column projection) vs MERTools'
    layout (one .npy per sample, np.load in a loop). Target >= 3x.
(b) upsert N rows, then the same rows again (compared, then with
    skip_existing): time ratio, rows and Lance versions after each.
(c) kNN on M x 256 clustered vectors (cosine): recall@10 of the IVF_SQ index
    vs exact numpy, and the speed ratio for 100 queries, both batched
    (one matmul vs one Lance call) and one query at a time. Target recall
    >= 0.95 at >= 10x.
Timings are the best of ``--repeats`` alternating runs, so a busy shared
machine penalises both sides alike.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mer.store import open_store
from mer.store.ann import Searcher, build_index


def best_of(repeats: int, *fns):
    """Run the functions in alternation ``repeats`` times; best seconds and last result of each."""
    times = [float("inf")] * len(fns)
    results = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i] = min(times[i], time.perf_counter() - start)
    return times, results


def bench_read(root: Path, n: int, dim: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"s{i:06d}" for i in range(n)]
    store = open_store(root / "store")
    store.upsert("bench", "read0000", {"sample_id": ids, "split": "train", "vector": vectors})
    npy = root / "npy"
    npy.mkdir()
    for sid, vec in zip(ids, vectors):
        np.save(npy / f"{sid}.npy", vec)

    def from_store():
        return store.read("bench", split="train").vector

    def from_npy():
        return np.stack([np.load(npy / f"{sid}.npy") for sid in ids])

    (t_store, t_npy), (a, b) = best_of(repeats, from_store, from_npy)
    assert np.array_equal(np.sort(a, axis=0), np.sort(b, axis=0))
    print(f"(a) read {n} x {dim} float32 -> numpy: store {t_store:.3f} s, one .npy per sample {t_npy:.3f} s, "
          f"store is {t_npy / t_store:.1f}x faster (target >= 3x)")


def bench_upsert(root: Path, n: int, dim: int) -> None:
    rng = np.random.default_rng(1)
    rows = {
        "sample_id": [f"s{i:06d}" for i in range(n)],
        "split": "train",
        "label": np.array(["sad", "happy", None, "worried"], dtype=object)[np.arange(n) % 4],
        "vector": rng.normal(size=(n, dim)).astype(np.float32),
    }
    store = open_store(root / "upsert")
    out = []
    for attempt, skip in (("first", False), ("again", False), ("again with skip_existing", True)):
        start = time.perf_counter()
        written = store.upsert("bench", "upsert00", rows, skip_existing=skip)
        seconds = time.perf_counter() - start
        tbl = store.db.open_table("features__bench__upsert00")
        out.append((attempt, seconds, written, tbl.count_rows(), len(tbl.list_versions())))
    for attempt, seconds, written, count, versions in out:
        print(f"(b) upsert {n} x {dim} {attempt}: {seconds:.3f} s, {written} rows written, "
              f"{count} rows in table, {versions} Lance version(s)")
    print(f"(b) second upsert / first: {out[1][1] / out[0][1]:.2f}x the time "
          f"({out[2][1] / out[0][1]:.2f}x with skip_existing), row count "
          f"{out[0][3]} -> {out[1][3]} -> {out[2][3]}, versions {out[0][4]} -> {out[1][4]} -> {out[2][4]}")


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors near 200 random 24-d subspaces: clustered and of low intrinsic dimension, like embeddings."""
    rng = np.random.default_rng(seed)
    clusters, rank = 200, 24
    centers = 2.0 * rng.normal(size=(clusters, dim))
    basis = rng.normal(size=(clusters, rank, dim)) / np.sqrt(rank)
    which = rng.integers(0, clusters, n)
    out = np.empty((n, dim), np.float32)
    for c in range(clusters):  # per cluster, not per row
        rows = np.flatnonzero(which == c)
        out[rows] = centers[c] + rng.normal(size=(len(rows), rank)) @ basis[c] + 0.05 * rng.normal(size=(len(rows), dim))
    return out


def bench_ann(root: Path, n: int, dim: int, queries: int, repeats: int, k: int = 10) -> None:
    vectors = clustered(n, dim)
    store = open_store(root / "ann")
    store.upsert("bench", "ann00000", {"sample_id": np.arange(n).astype(str), "split": "train", "vector": vectors})
    tbl = store.open_table("bench")
    summary = build_index(tbl, force=True)
    search = Searcher(store.open_table("bench"))
    print(f"(c) IVF_SQ index on {n} x {dim}: {summary['params']}, built in {summary['seconds']} s")
    rng = np.random.default_rng(2)
    q = vectors[rng.choice(n, queries, replace=False)] + 0.01 * rng.normal(size=(queries, dim)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def exact(batch):
        sims = (batch / np.linalg.norm(batch, axis=1, keepdims=True)) @ unit.T
        return np.argpartition(-sims, k, axis=1)[:, :k]

    def exact_batched():
        return exact(q)

    def exact_one_by_one():
        return np.concatenate([exact(row[None]) for row in q])

    def ann_batched():
        return search(q, k, columns=["sample_id"])

    def ann_one_by_one():
        return [search(row[None], k, columns=["sample_id"]) for row in q]

    (t_exact, t_ann), (truth, found) = best_of(repeats, exact_batched, ann_batched)
    (t_exact1, t_ann1), _ = best_of(repeats, exact_one_by_one, ann_one_by_one)
    qi = found.column("query_index").to_numpy()
    got = found.column("sample_id").to_numpy(zero_copy_only=False).astype(int)
    recall = np.mean([len(set(got[qi == i]) & set(truth[i])) / k for i in range(queries)])
    print(f"(c) recall@{k} of the index vs exact numpy (cosine), {queries} queries: {recall:.3f} (target >= 0.95)")
    print(f"(c) {queries} queries batched: exact numpy {t_exact:.3f} s, index {t_ann:.3f} s, "
          f"index is {t_exact / t_ann:.1f}x faster")
    print(f"(c) {queries} queries one at a time: exact numpy {t_exact1:.3f} s, index {t_ann1:.3f} s, "
          f"index is {t_exact1 / t_ann1:.1f}x faster (target >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Small sizes, for a smoke run.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating runs per timing (best kept).")
    parser.add_argument("--dir", default=None, help="Work folder (default: a temporary one, removed after).")
    args = parser.parse_args()
    n_read, n_ann = (2_000, 20_000) if args.quick else (10_000, 100_000)
    root = Path(args.dir or tempfile.mkdtemp(prefix="mer_bench_store_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        bench_read(root, n_read, 1024, args.repeats)
        bench_upsert(root, n_read, 1024)
        bench_ann(root, n_ann, 256, queries=100, repeats=args.repeats)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
