"""MERTools' per-sample .npy folders into the store (utterance and frame level) and back out."""

import sys

import numpy as np
import pandas as pd
import pytest

from mer.store import open_store
from mer.store.npy import export_folder, import_folder


def manifest(n: int) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": [f"sample_{i:08d}" for i in range(n)],
                         "split": ["train"] * (n // 2) + ["unlabeled"] * (n - n // 2),
                         "label": ["sad"] * (n // 2) + [None] * (n - n // 2)})


def write_folder(folder, n: int, frames: bool, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in range(n):
        shape = (int(rng.integers(3, 40)), 12) if frames else (12,)
        arrays[f"sample_{i:08d}"] = rng.normal(size=shape).astype(np.float32)
        np.save(folder / f"sample_{i:08d}.npy", arrays[f"sample_{i:08d}"])
    return arrays


def test_utterance_level_folder_imports_exactly_and_a_rerun_adds_nothing(tmp_path):
    arrays = write_folder(tmp_path / "hubert-UTT", 30, frames=False)
    store = open_store(tmp_path / "store")
    summary = import_folder(store, "chinese-hubert-large", tmp_path / "hubert-UTT", manifest(30), seq_len=0)
    assert summary.written == 30 and summary.problems == [] and summary.dim == 12
    feats = store.read("chinese-hubert-large")
    got = dict(zip(feats.ids, feats.vector))
    assert all(np.array_equal(got[sid], a) for sid, a in arrays.items())
    assert feats.label[feats.split == "train"].tolist() == ["sad"] * 15  # split and label from the manifest
    versions = len(store.versions(summary.table.split("__")[1]))
    again = import_folder(store, "chinese-hubert-large", tmp_path / "hubert-UTT", manifest(30), seq_len=0)
    assert again.table == summary.table and again.written == 0 and again.skipped == 30
    assert len(store.versions(summary.table.split("__")[1])) == versions  # no new Lance version either
    np.save(tmp_path / "hubert-UTT" / "sample_00000003.npy", np.zeros(12, np.float32))
    changed = import_folder(store, "chinese-hubert-large", tmp_path / "hubert-UTT", manifest(30), seq_len=0)
    assert changed.table != summary.table  # a changed file is another version of the features


def test_frame_level_files_keep_their_mean_and_segment_means(tmp_path):
    from mer.encoders.base import segment_means

    arrays = write_folder(tmp_path / "clip-FRA", 10, frames=True, seed=1)
    store = open_store(tmp_path / "store")
    summary = import_folder(store, "clip-vit-large-patch14", tmp_path / "clip-FRA", manifest(10), seq_len=4)
    feats = store.read("clip-vit-large-patch14", with_seq=True)
    for i, sid in enumerate(feats.ids):
        np.testing.assert_allclose(feats.vector[i], arrays[sid].mean(0), rtol=1e-6)
        steps = feats.seq_mask[i].sum()
        np.testing.assert_allclose(feats.seq[i, :steps], segment_means(arrays[sid], 4), rtol=1e-6)
    # and back out in MERTools' layout: (D,) per file, or the stored frames as (T, D)
    assert export_folder(store, summary.reference, tmp_path / "out-UTT") == 10
    assert export_folder(store, summary.reference, tmp_path / "out-FRA", frames=True) == 10
    sid = feats.ids[0]
    np.testing.assert_allclose(np.load(tmp_path / "out-UTT" / f"{sid}.npy"), arrays[sid].mean(0), rtol=1e-6)
    assert np.load(tmp_path / "out-FRA" / f"{sid}.npy").shape == (min(4, len(arrays[sid])), 12)


def test_bad_files_are_reported_by_name_and_the_rest_imported(tmp_path):
    folder = tmp_path / "feats"
    write_folder(folder, 6, frames=False)
    np.save(folder / "sample_00000001.npy", np.zeros(7, np.float32))  # another width
    (folder / "sample_00000002.npy").write_text("not numpy")
    np.save(folder / "sample_00000003.npy", np.array(["a", "b"]))  # not numbers
    np.save(folder / "unknown_clip.npy", np.zeros(12, np.float32))  # not in the manifest
    summary = import_folder(open_store(tmp_path / "store"), "x", folder, manifest(6), seq_len=0)
    assert summary.written == 3
    reasons = "\n".join(summary.problems)
    for name, why in (("sample_00000001", "width 7, the folder's others have 12"), ("sample_00000002", "not a numpy array"),
                      ("sample_00000003", "not a numeric array"), ("unknown_clip", "is not in the manifest")):
        assert f"{folder / name}.npy: " in reasons and why in reasons


def test_cli_import_prints_the_job_line_and_a_job_names_the_table(tmp_path, capsys):
    from mer.cli import main
    from mer.config import job_from_dict
    from mer.encoders import feature_ref

    write_folder(tmp_path / "hubert-UTT", 8, frames=False)
    m = manifest(8)
    m.to_csv(tmp_path / "manifest.csv", index=False)
    argv, sys.argv = sys.argv, ["mer", "store", "import", str(tmp_path / "hubert-UTT"), "--name", "chinese-hubert-large",
                                "--role", "audio", "--manifest", str(tmp_path / "manifest.csv"),
                                "--store", str(tmp_path / "store")]
    try:
        main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    line = out.strip().splitlines()[-1]
    assert line.startswith("next: name it in a job: encoders.audio: {alias: imported, model: chinese-hubert-large@")
    reference = line.split("model: ")[1].rstrip("}")
    job = job_from_dict({"name": "x", "manifest": "m.csv", "store": str(tmp_path / "store"),
                         "encoders": {"audio": {"alias": "imported", "model": reference}}})
    assert feature_ref("audio", job.encoder("audio")).table in open_store(tmp_path / "store").table_names()
    from mer.encoders import check_streams
    from mer.errors import MerError

    with pytest.raises(MerError, match="must name an import as <name>@<version8>"):
        check_streams({"audio": job.encoder("audio").__class__(alias="imported", model="chinese-hubert-large")})
