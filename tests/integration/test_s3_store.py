"""The feature store on an S3-compatible server: moto's server mode on 127.0.0.1.

What a user does to put the store on S3 or MinIO: ``store: s3://bucket/mer``
plus the usual ``AWS_*`` variables (here: a plain-http endpoint on loopback,
so mer adds ``allow_http``). Extract, train, selftrain and ``mer query`` run on
it; writes stay idempotent and concurrent; a dead endpoint or wrong
credentials is a one-line ``StoreError`` within seconds, not a hang.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from mer.config import job_from_dict
from mer.store import StoreError, open_store

pytestmark = pytest.mark.integration

BUCKET = "bucket"
STORE = f"s3://{BUCKET}/mer"
# Bounded waits for the failure cases: object_store's defaults retry for minutes.
FAST_FAIL = {"connect_timeout": "2s", "timeout": "10s", "client_max_retries": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, with ``bucket``; the AWS_* variables point at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "mer-test",
                            "AWS_SECRET_ACCESS_KEY": "mer-test-secret", "AWS_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        env.delenv("MER_STORE_OPTIONS", raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def s3_ray(s3, ray_local):
    """Ray started after the AWS_* variables are set, so its workers reach the server too."""
    return s3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from mer.corpus.demo import make_demo_corpus

    return make_demo_corpus(tmp_path_factory.mktemp("demo"), n_train=12, n_unlabeled=6, n_test=6, seed=3, workers=1)


def _job(manifest: Path, run_dir: Path, **extra):
    return job_from_dict({
        "name": "s3",
        "manifest": str(manifest),
        "store": STORE,
        "run_dir": str(run_dir),
        "encoders": {"audio": {"alias": "logmel"}, "text": {"alias": "minilm"}},
        "stages": ["validate", "extract", "train", "selftrain"],
        "train": {"epochs": 2, "seeds": [0], "hidden": 8},
        "selftrain": {"rounds": 1, "threshold": 0.0, "min_new": 1, "models": ["agt", "unimodal"]},
        "extract": {"num_actors": 1},
        **extra,
    })


def _versions(store) -> dict[str, int]:
    return {name: len(store.db.open_table(name).list_versions()) for name in store.feature_tables()}


@pytest.mark.timeout(900)
def test_extract_train_selftrain_query_on_s3(s3_ray, corpus, tmp_path):
    from click.testing import CliRunner

    from mer.cli import cli
    from mer.runner import run_job

    job = _job(corpus, tmp_path / "run")
    results = run_job(job, echo=lambda _: None)
    assert [results["extract"][role]["written"] for role in ("audio", "text")] == [24, 24]

    store = open_store(STORE, create=False)
    assert sorted(p.split("__")[1] for p in store.feature_tables()) == ["logmel", "minilm"]
    assert sorted(store.read("minilm").ids) == sorted(store.read("logmel").ids)
    assert len(store.read("logmel", split="unlabeled")) == 6
    # self-training labelled every unlabeled sample it kept, and wrote them to the bucket
    summary = json.loads((Path(job.run_dir) / "selftrain.json").read_text())
    pseudo = store.read_pseudo_labels(summary["run_id"])
    assert len(pseudo) == results["selftrain"]["pseudo_labels"] > 0
    assert set(pseudo["sample_id"]) <= set(store.read("logmel", split="unlabeled").ids)
    assert len(store.read_runs()) >= 1  # train logged its run in the bucket

    # a rerun of extract writes nothing and adds no table version
    before = _versions(store)
    again = run_job(_job(corpus, tmp_path / "run", stages=["extract"]), echo=lambda _: None)
    assert [again["extract"][role]["written"] for role in ("audio", "text")] == [0, 0]
    assert [again["extract"][role]["skipped"] for role in ("audio", "text")] == [24, 24]
    assert _versions(open_store(STORE)) == before

    out = CliRunner().invoke(cli, ["query", "tables", "--store", STORE])
    assert out.exit_code == 0, out.output
    for name in before:
        assert name in out.output


@pytest.mark.timeout(300)
def test_concurrent_writers_lose_nothing(s3):
    """Two threads upsert disjoint samples into one new table, four commits each."""
    store = open_store(STORE)
    rng = np.random.default_rng(0)

    def write(prefix: str) -> None:
        for batch in range(4):
            ids = [f"{prefix}{batch}_{i}" for i in range(5)]
            store.upsert("conc", "0" * 16, {"sample_id": ids, "split": "train",
                                            "vector": rng.standard_normal((5, 4)).astype(np.float32)})

    threads = [threading.Thread(target=write, args=(prefix,)) for prefix in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = open_store(STORE).read("conc").ids
    expected = {f"{p}{b}_{i}" for p in "ab" for b in range(4) for i in range(5)}
    assert len(ids) == len(expected) and set(ids) == expected


def _fails_fast(uri: str) -> str:
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        open_store(uri, create=False)
    assert time.monotonic() - start < 60
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"cannot open store {uri!r}: ")
    return text


@pytest.mark.timeout(120)
def test_unreachable_endpoint_is_one_line(s3, monkeypatch, tmp_path, corpus):
    """Through the job's ``store_options``, as ``mer run`` applies them."""
    from mer.runner import run_job

    monkeypatch.setenv("MER_STORE_OPTIONS", "{}")  # so the test's end restores it
    closed = f"http://127.0.0.1:{_free_port()}"
    job = _job(corpus, tmp_path / "run", stages=["validate"], store_options={"aws_endpoint": closed, **FAST_FAIL})
    run_job(job, echo=lambda _: None)
    assert _fails_fast(STORE) == (
        f"cannot open store {STORE!r}: cannot connect to {closed} "
        "(check AWS_ENDPOINT_URL or store_options.aws_endpoint)"
    )


@pytest.mark.timeout(120)
def test_wrong_credentials_are_one_line(s3, monkeypatch):
    """moto checks signatures once auth is on; the key mer sends is unknown to it."""
    monkeypatch.setenv("MER_STORE_OPTIONS", json.dumps(FAST_FAIL))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    requests.post(f"{s3}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        text = _fails_fast(STORE)
    finally:
        requests.post(f"{s3}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    assert text == (
        f"cannot open store {STORE!r}: InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our "
        "records. (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or store_options)"
    )


def test_options_come_from_the_environment(monkeypatch):
    """Local folders take none; a plain-http endpoint adds allow_http; the job's options win."""
    from mer.store import set_store_options, store_options

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MER_STORE_OPTIONS", "{}")  # so the test's end restores it
    assert store_options("mer_store") == {} and store_options("/data/store") == {}
    assert store_options(STORE) == {"allow_http": "true"}
    set_store_options({"allow_http": "false", "timeout": 30})
    assert store_options(STORE) == {"allow_http": "false", "timeout": "30"}
    set_store_options({})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")
    assert store_options(STORE) == {}
    monkeypatch.setenv("MER_STORE_OPTIONS", "[1]")
    with pytest.raises(StoreError, match="MER_STORE_OPTIONS is not a JSON object"):
        store_options(STORE)
