"""Feature store: real LanceDB folders in tmp_path; values asserted, not just "it ran"."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.store import DimensionError, StoreError, feature_schema, open_store, table_name
from mer.store.schema import parse_table_name

V1 = "a1b2c3d4e5f6"


def _rows(n: int, dim: int = 8, seed: int = 0, prefix: str = "s", with_seq: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    rows = {
        "sample_id": [f"{prefix}{i:04d}" for i in range(n)],
        "split": np.where(np.arange(n) % 3 == 0, "test", "train"),
        "label": [None if i % 4 == 0 else ["sad", "happy", "worried"][i % 3] for i in range(n)],
        "vector": rng.normal(size=(n, dim)).astype(np.float32),
    }
    if with_seq:
        seq = [rng.normal(size=(int(rng.integers(0, 6)), dim)).astype(np.float32) for _ in range(n)]
        seq[1] = None
        rows["seq"] = seq
    return rows


def test_schema_is_typed():
    schema = feature_schema(1024)
    assert schema.field("vector").type == pa.list_(pa.float32(), 1024)
    assert schema.field("seq").type == pa.list_(pa.list_(pa.float32(), 1024))
    assert schema.field("extracted_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("label").nullable and not schema.field("sample_id").nullable
    assert feature_schema(8, seq_dtype="float16").field("seq").type.value_type.value_type == pa.float16()
    assert table_name("hf_audio", "0123456789abcdef") == "features__hf_audio__01234567"
    assert parse_table_name("features__hf_audio__01234567") == ("hf_audio", "01234567")
    assert parse_table_name("runs") is None


def test_stored_table_has_the_schema(tmp_path):
    store = open_store(tmp_path / "st")
    store.upsert("enc", V1, _rows(5))
    tbl = store.db.open_table(table_name("enc", V1))
    assert tbl.schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert set(tbl.to_arrow().column("encoder").to_pylist()) == {"enc"}
    assert set(tbl.to_arrow().column("encoder_version").to_pylist()) == {V1}


def test_read_equals_written_vector_and_ragged_seq(tmp_path):
    store = open_store(tmp_path / "st")
    rows = _rows(40)
    store.upsert("enc", V1, rows)
    got = store.read("enc", with_seq=True)
    order = np.argsort(got.ids)
    assert list(got.ids[order]) == rows["sample_id"]
    np.testing.assert_array_equal(got.vector[order], rows["vector"])
    assert got.vector.dtype == np.float32 and got.vector.shape == (40, 8)
    assert got.seq.shape == (40, max(len(s) for s in rows["seq"] if s is not None), 8)
    for i, j in enumerate(order):
        steps = rows["seq"][i]
        n = 0 if steps is None else len(steps)
        assert got.seq_mask[j].sum() == n and got.seq_mask[j, :n].all()
        np.testing.assert_array_equal(got.seq[j, :n], steps if n else np.zeros((0, 8)))
        assert not got.seq[j, n:].any()
    assert [got.label[j] for j in order] == rows["label"]


def test_read_split_and_padded_seq_input(tmp_path):
    store = open_store(tmp_path / "st")
    rng = np.random.default_rng(1)
    padded = rng.normal(size=(6, 4, 3)).astype(np.float32)
    lengths = np.array([4, 0, 1, 2, 3, 4])
    store.upsert("enc", V1, {"sample_id": list("abcdef"), "split": "train", "vector": padded[:, 0],
                             "seq": padded, "seq_lengths": lengths}, seq_dtype="float16")
    store.upsert("enc", V1, {"sample_id": ["z"], "split": "test", "vector": padded[:1, 0]})
    got = store.read("enc", split="train", with_seq=True, max_len=3)
    assert sorted(got.ids) == list("abcdef") and set(got.split) == {"train"}
    assert got.seq.shape == (6, 3, 3) and got.seq.dtype == np.float16
    np.testing.assert_array_equal(got.seq_mask.sum(1), np.minimum(lengths, 3))
    np.testing.assert_allclose(got.seq[3, :2], padded[3, :2], rtol=1e-3)
    assert list(store.read("enc", split=["test"]).ids) == ["z"]


def test_upsert_is_idempotent_and_commits_nothing_when_unchanged(tmp_path):
    store = open_store(tmp_path / "st")
    rows = _rows(30)
    assert store.upsert("enc", V1, rows) == 30
    versions = len(store.versions("enc"))
    assert store.upsert("enc", V1, rows) == 0
    assert len(store.versions("enc")) == versions
    assert store.db.open_table(table_name("enc", V1)).count_rows() == 30

    changed = dict(rows, vector=rows["vector"].copy())
    changed["vector"][7] += 1.0
    assert store.upsert("enc", V1, changed) == 1
    assert store.db.open_table(table_name("enc", V1)).count_rows() == 30
    got = store.read("enc")
    np.testing.assert_array_equal(got.vector[list(got.ids).index("s0007")], changed["vector"][7])

    more = _rows(40, seed=5)  # s0000..s0039: 30 stored (different values) + 10 new
    assert store.upsert("enc", V1, more, skip_existing=True) == 10
    got = store.read("enc")
    assert len(got) == 40 and len(set(got.ids)) == 40
    np.testing.assert_array_equal(got.vector[list(got.ids).index("s0000")], rows["vector"][0])


def test_duplicate_ids_in_one_batch_keep_the_last(tmp_path):
    store = open_store(tmp_path / "st")
    vec = np.arange(24, dtype=np.float32).reshape(3, 8)
    assert store.upsert("enc", V1, {"sample_id": ["a", "b", "a"], "split": "train", "vector": vec}) == 2
    got = store.read("enc")
    np.testing.assert_array_equal(got.vector[list(got.ids).index("a")], vec[2])


def test_read_as_of_version(tmp_path):
    store = open_store(tmp_path / "st")
    store.upsert("enc", V1, _rows(10))
    first = store.read("enc")
    store.upsert("enc", V1, _rows(25, seed=3, prefix="n"))
    assert len(store.read("enc")) == 35
    old = store.read("enc", as_of=first.table_version)
    assert len(old) == 10 and old.table_version == first.table_version
    np.testing.assert_array_equal(old.vector, first.vector)
    assert [v["rows"] for v in store.versions("enc")] == [0, 10, 35]  # created empty, then two merges
    with pytest.raises(StoreError, match="no version 99"):
        store.read("enc", as_of=99)


def _write_half(uri: str, prefix: str) -> None:
    store = open_store(uri)
    for b in range(4):
        store.upsert("enc", V1, _rows(25, seed=b, prefix=f"{prefix}{b}_", with_seq=False))


@pytest.mark.timeout(300)  # two fresh interpreters import lancedb; slow only on a loaded machine
def test_two_processes_writing_concurrently_lose_nothing(tmp_path):
    uri = str(tmp_path / "st")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_half, args=(uri, p)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(280)
    assert [p.exitcode for p in procs] == [0, 0]
    ids = open_store(uri).existing_ids("enc", V1)
    assert len(ids) == 200
    assert ids == {f"{p}{b}_{i:04d}" for p in "ab" for b in range(4) for i in range(25)}


def test_errors_are_one_line_and_name_the_problem(tmp_path):
    store = open_store(tmp_path / "st")
    store.upsert("enc", V1, _rows(4))
    with pytest.raises(DimensionError, match="vector width 16 does not match the table's 8"):
        store.upsert("enc", V1, _rows(4, dim=16))
    with pytest.raises(StoreError, match=r"no features for encoder 'nope'.*known: enc@a1b2c3d4"):
        store.read("nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        open_store(tmp_path / "file")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing", create=False)


def test_encoder_reference_picks_newest_or_named_version(tmp_path):
    store = open_store(tmp_path / "st")
    store.upsert("enc", "11111111aaaa", _rows(3))
    store.upsert("enc", "22222222bbbb", _rows(5))
    assert store.resolve("enc") == "features__enc__22222222"
    assert store.resolve("enc@11111111") == "features__enc__11111111"
    assert store.resolve("features__enc__11111111") == "features__enc__11111111"
    assert len(store.read("enc", "11111111aaaa")) == 3
    assert store.existing_ids("enc", "22222222bbbb") == {f"s{i:04d}" for i in range(5)}


def test_pseudo_labels_and_runs_tables(tmp_path):
    store = open_store(tmp_path / "st")
    assert store.read_pseudo_labels("r1").empty
    df = pd.DataFrame({"sample_id": ["u1", "u2"], "run_id": "r1", "round": 1, "label": ["sad", "happy"],
                       "confidence": [0.95, 0.99], "votes": [{"agt": "sad", "unimodal": "sad"}, {"agt": "happy"}]})
    assert store.write_pseudo_labels(df) == 2
    store.write_pseudo_labels(df.assign(round=2))
    store.write_pseudo_labels(df.assign(label=["worried", "happy"]))  # same key: replaces
    got = store.read_pseudo_labels("r1", round=1).sort_values("sample_id")
    assert list(got.label) == ["worried", "happy"] and len(store.read_pseudo_labels("r1")) == 4
    assert got.votes.iloc[0] == '{"agt": "sad", "unimodal": "sad"}'
    store.log_run("r1", "name: x\n", {"weighted_f1": 0.8}, git_commit="abc", data_versions={"features__a__b": 3})
    store.log_run("r1", "name: x\n", {"weighted_f1": 0.9}, git_commit="abc")
    runs = store.read_runs()
    assert len(runs) == 1 and runs.metrics_json[0] == '{"weighted_f1": 0.9}'
    assert {"pseudo_labels", "runs"} <= set(store.table_names())


def _store_for_cli(tmp_path, n=600):
    uri = str(tmp_path / "st")
    store = open_store(uri)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    vec = (centers[np.arange(n) % 6] + 0.1 * rng.normal(size=(n, 16))).astype(np.float32)
    store.upsert("enc", V1, {"sample_id": [f"s{i:04d}" for i in range(n)], "split": ["train", "test"] * (n // 2),
                             "label": [["sad", "happy", "angry"][i % 6 // 2] for i in range(n)], "vector": vec})
    return uri


def test_query_cli(tmp_path):
    uri = _store_for_cli(tmp_path)
    runner = CliRunner()

    out = runner.invoke(cli, ["query", "tables", "--store", uri])
    assert out.exit_code == 0, out.output
    assert "features__enc__a1b2c3d4  rows=600" in out.output and "dim=16" in out.output
    assert "test=300, train=300" in out.output and "next:" in out.output

    out = runner.invoke(cli, ["query", "get", "s0007", "--store", uri])
    assert "vector_shape: (16,)" in out.output and "label: sad" in out.output and "next: mer query like" in out.output

    out = runner.invoke(cli, ["query", "like", "s0000", "--encoder", "enc", "-k", "5", "--where", "split = 'train'"],
                        env={"MER_STORE": uri})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    neighbours = [line.split()[1] for line in lines[1:6]]
    # s0000 is in cluster 0 (i % 6 == 0): its neighbours are the same cluster's train rows.
    assert all(int(s[1:]) % 6 == 0 and int(s[1:]) % 2 == 0 and s != "s0000" for s in neighbours)
    assert "(exact search, 5 rows)" in out.output

    out = runner.invoke(cli, ["query", "index", "--encoder", "enc", "--store", uri])
    assert "not indexed" in out.output
    out = runner.invoke(cli, ["query", "index", "--encoder", "enc@a1b2c3d4", "--force", "--store", uri])
    assert out.exit_code == 0 and "indexed features__enc__a1b2c3d4: 600 rows" in out.output
    out = runner.invoke(cli, ["query", "like", "s0000", "--encoder", "enc", "-k", "5", "--store", uri])
    assert "(ann search, 5 rows)" in out.output
    assert all(int(line.split()[1][1:]) % 6 == 0 for line in out.output.splitlines()[1:6])

    parquet = tmp_path / "out" / "enc.parquet"
    out = runner.invoke(cli, ["query", "export", "--encoder", "enc", str(parquet), "--store", uri])
    assert "wrote 600 rows" in out.output
    assert pd.read_parquet(parquet).shape[0] == 600

    out = runner.invoke(cli, ["query", "like", "s0000", "--encoder", "zzz", "--store", uri])
    assert isinstance(out.exception, StoreError) and "known: enc@a1b2c3d4" in str(out.exception)


def test_plain_clients_read_the_tables_as_the_readme_shows(tmp_path):
    uri = _store_for_cli(tmp_path, n=60)
    # --- README: lancedb ---
    import lancedb

    db = lancedb.connect(uri)
    tbl = db.open_table("features__enc__a1b2c3d4")
    df = tbl.to_pandas()
    assert len(df) == 60 and len(df.vector[0]) == 16
    # --- README: pyarrow (through the Lance dataset) ---
    import lance

    ds = lance.dataset(f"{uri}/features__enc__a1b2c3d4.lance")
    arrow_table = ds.to_table(columns=["sample_id", "label", "vector"], filter="split = 'train'")
    vectors = arrow_table["vector"].combine_chunks().flatten().to_numpy().reshape(len(arrow_table), -1)
    assert vectors.shape == (30, 16)
    # --- README: duckdb (over the Arrow table, or the Lance dataset itself) ---
    import duckdb

    counts = duckdb.sql("SELECT label, count(*) AS n FROM arrow_table GROUP BY label ORDER BY label").fetchall()
    assert counts == [("angry", 10), ("happy", 10), ("sad", 10)]
    lance_ds = tbl.to_lance()  # noqa: F841 (duckdb finds it by name in the query below)
    assert duckdb.sql("SELECT count(*) FROM lance_ds WHERE split = 'test'").fetchall() == [(30,)]


def test_indexed_and_exact_search_report_the_same_cosine_distances(tmp_path):
    """The index only finds the rows: the distance shown is the exact 1 - cos, whichever way they were found."""
    from mer.store.ann import build_index, cosine_distance, nearest

    store = open_store(_store_for_cli(tmp_path))
    tbl = store.open_table("enc")
    query = store.read("enc").vector[0]
    exact, mode = nearest(tbl, query, 8)
    assert mode == "exact"
    build_index(tbl, force=True)
    indexed, mode = nearest(store.open_table("enc"), query, 8)
    assert mode == "ann"
    both = exact.merge(indexed, on="sample_id", suffixes=("_exact", "_ann"))
    assert len(both) >= 6  # the index finds (nearly) the same neighbours
    np.testing.assert_allclose(both["distance_exact"], both["distance_ann"], atol=1e-6)
    vectors = store.read("enc")
    row = list(vectors.ids).index(exact["sample_id"].iloc[1])
    assert exact["distance"].iloc[1] == pytest.approx(cosine_distance(vectors.vector[row:row + 1], query)[0], abs=1e-6)
    assert (exact["distance"].diff().dropna() >= 0).all()
