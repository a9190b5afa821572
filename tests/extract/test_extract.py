"""Extraction on a local Ray with two fake GPUs: pinning, actor death, resume, quarantine."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from mer.config import EncoderSpec, ExtractConfig, job_from_dict  # noqa: E402
from mer.corpus import stage as corpus_stage  # noqa: E402
from mer.corpus.demo import make_demo_corpus  # noqa: E402
from mer.encoders import build_encoder  # noqa: E402
from mer.extract import stage as extract_stage  # noqa: E402
from mer.extract.pipeline import extract_rows, plan_resources  # noqa: E402
from mer.store import open_store  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight real demo clips plus a corrupt mp4 and a missing file in the manifest."""
    out = tmp_path_factory.mktemp("corpus")
    manifest = make_demo_corpus(out, n_train=6, n_unlabeled=2, n_test=0, seed=2, workers=1)
    (out / "media" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    with open(manifest, "a") as f:
        f.write("bad_corrupt,media/corrupt.mp4,,,angry,train\n")
        f.write("bad_missing,media/missing.mp4,,,happy,train\n")
    return manifest


def rows_of(manifest: Path) -> pd.DataFrame:
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False).replace({"": None})
    df["video"] = [str(manifest.parent / v) for v in df["video"]]
    return df


@pytest.mark.timeout(240)  # includes the module's Ray start
def test_two_gpu_actors_are_pinned_to_different_devices(ray_local):
    @ray.remote(num_gpus=1, num_cpus=0)
    class Probe:
        def where(self):
            return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    actors = [Probe.remote() for _ in range(2)]
    (ids_a, env_a), (ids_b, env_b) = ray.get([a.where.remote() for a in actors])
    assert len(ids_a) == len(ids_b) == 1 and ids_a != ids_b
    assert {env_a, env_b} == {"0", "1"}
    for a in actors:
        ray.kill(a)


def test_plan_reserves_cpu_for_decode():
    gpu = plan_resources(ExtractConfig(num_actors=4), {"CPU": 2, "GPU": 2})
    assert gpu.actors == 2 and gpu.actor_gpus == 1.0  # never a pool larger than the GPUs
    assert gpu.actors * gpu.actor_cpus + gpu.decode_cpus <= 2
    node = plan_resources(ExtractConfig(num_actors=4), {"CPU": 32, "GPU": 4})
    assert node.actor_cpus == 1.0 and 32 - 4 * node.actor_cpus >= 28  # cores left to feed the GPUs
    cpu = plan_resources(ExtractConfig(num_actors=1), {"CPU": 2})
    assert cpu.actor_gpus == 0 and cpu.actor_cpus + cpu.decode_cpus <= 2 and cpu.threads == 2


@pytest.mark.timeout(300)
def test_stage_extracts_clean_rows_then_rerun_writes_nothing(ray_local, corpus, tmp_path):
    job = job_from_dict(
        {
            "name": "t",
            "manifest": str(corpus),
            "store": str(tmp_path / "store"),
            "run_dir": str(tmp_path / "run"),
            "encoders": {"audio": {"alias": "logmel", "seq_len": 4, "batch_size": 2}},
            "stages": ["validate", "extract"],
            "extract": {"write_batch": 4},
        }
    )
    corpus_stage.run(job)
    first = extract_stage.run(job)["audio"]
    assert (first["written"], first["skipped"], first["failed"]) == (8, 0, 0)
    quarantine = pd.read_csv(tmp_path / "run" / "quarantine.csv")
    assert {"bad_corrupt", "bad_missing"} <= set(quarantine["sample_id"])

    store = open_store(job.store)
    feats = store.read("logmel", first["version"], with_seq=True)
    good = rows_of(corpus).iloc[:8]
    assert sorted(feats.ids) == sorted(good["sample_id"])
    assert feats.vector.shape == (8, 137) and feats.seq.shape == (8, 4, 137)
    assert len(store.versions("logmel", first["version"])) >= 2  # written in bounded batches
    # the stored numbers are the encoder's numbers
    enc = build_encoder(job.encoders["audio"])
    row = good.iloc[3].to_dict()
    expected = enc.encode([enc.prepare(row)])[0][0]
    np.testing.assert_allclose(feats.vector[list(feats.ids).index(row["sample_id"])], expected, rtol=1e-5)

    again = extract_stage.run(job)["audio"]
    assert (again["written"], again["skipped"]) == (0, 8)
    assert store.read("logmel", first["version"]).table_version == feats.table_version


@pytest.mark.timeout(300)
def test_blocks_of_only_unlabeled_rows_keep_string_labels(ray_local, corpus, tmp_path):
    """Labels survive extraction when a Ray Data block holds only unlabeled rows (stored as null)."""
    rows = pd.read_csv(corpus, dtype=str, keep_default_na=False).iloc[:8]
    rows = rows.sort_values("split", key=lambda s: s != "unlabeled")  # the unlabeled rows share a block
    rows["video"] = [str(corpus.parent / v) for v in rows["video"]]
    manifest = tmp_path / "manifest.csv"
    rows.to_csv(manifest, index=False)
    job = job_from_dict({
        "name": "t", "manifest": str(manifest), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "encoders": {"text": {"alias": "minilm", "seq_len": 0, "batch_size": 2}}, "stages": ["extract"],
    })
    summary = extract_stage.run(job)["text"]
    assert (summary["written"], summary["failed"]) == (8, 0)
    feats = open_store(job.store).read("minilm", summary["version"])
    stored = dict(zip(feats.ids, feats.label))
    for sid, label in zip(rows["sample_id"], rows["label"]):
        assert stored[sid] == (label or None)



@pytest.mark.timeout(300)
def test_actor_pool_pins_gpus_and_survives_an_actor_death(ray_local, tmp_path, caplog):
    # The first actor to have returned 2 batches dies once the other has returned 2 too: both GPUs are in the
    # output even when one actor starts seconds after the other on a loaded machine, and the rerun's pool
    # (which may get only one actor going) still has 40-odd clips to do.
    n = 48
    rows = pd.DataFrame(
        {"sample_id": [f"s{i:02d}" for i in range(n)], "split": "unlabeled", "label": None,
         "video": None, "audio": None, "text": [f"text number {i}" for i in range(n)]}
    )
    marker = tmp_path / "killed"
    spec = EncoderSpec(alias="extract_plugins:ProbeEncoder", model=str(marker), num_frames=2, batch_size=2, seq_len=0)
    cfg = ExtractConfig(num_actors=2, gpus_per_actor=1.0, write_batch=6)
    result = extract_rows(rows, spec, str(tmp_path / "store"), cfg, progress=False)

    assert marker.exists()  # an actor died mid-run (os._exit after 2 batches)
    assert result["written"] == n and result["failed"] == 0
    assert set(result["per_gpu"]) == {"0", "1"}  # both pool actors, each on its own GPU
    feats = open_store(str(tmp_path / "store")).read("probe", result["version"])
    assert len(feats.ids) == n and len(set(feats.ids)) == n  # no sample lost, none duplicated
    assert set(feats.vector[:, 0].astype(int)) == {0, 1}  # CUDA_VISIBLE_DEVICES seen by the encoder
    # the dead actor ended that Ray Data run; what had not come back ran again in a new one
    assert re.search(r"extract probe: \w+Error; running the \d+ remaining clips again", caplog.text)
    np.testing.assert_array_equal(feats.vector[:, 2], [len(t) for t in rows.set_index("sample_id").loc[feats.ids, "text"]])


@pytest.mark.timeout(240)
def test_decode_and_encode_failures_are_quarantined_and_the_rest_extracted(ray_local, corpus, tmp_path):
    rows = rows_of(corpus)
    rows = pd.concat([rows.iloc[:4], rows[rows["sample_id"] == "bad_corrupt"]], ignore_index=True)
    rows.loc[3, "text"] = "boom"
    failed: list[dict] = []
    spec = EncoderSpec(alias="extract_plugins:FragileEncoder", batch_size=2)
    result = extract_rows(rows, spec, str(tmp_path / "store"), ExtractConfig(), on_failed=failed.extend, progress=False)

    reasons = {f["sample_id"]: f["reason"] for f in failed}
    assert reasons.keys() == {"bad_corrupt", rows.loc[3, "sample_id"]}
    assert reasons["bad_corrupt"].startswith("decode: DecodeError")
    assert reasons[rows.loc[3, "sample_id"]] == "encode: RuntimeError: boom in the model"
    assert (result["written"], result["failed"]) == (3, 2)
    feats = open_store(str(tmp_path / "store")).read("fragile", result["version"])
    assert sorted(feats.ids) == sorted(rows["sample_id"][:3])
    assert (feats.vector[:, 0] > 0).all()  # real audio RMS


def test_job_files_parse_and_name_the_paper_encoders():
    from mer.config import load_job
    from mer.encoders import encoder_version
    from mer.extract.stage import roles_of

    root = HERE.parents[1] / "jobs"
    demo = load_job(root / "extract.yaml")
    assert roles_of(demo) == ["audio", "video", "text"]
    paper = load_job(root / "extract_paper.yaml")
    assert roles_of(paper) == ["audio", "video", "text"]
    enc = paper.encoders
    assert (enc["audio"].alias, enc["audio"].model) == ("hf_audio", "facebook/hubert-large-ls960-ft")
    assert (enc["video"].alias, enc["video"].model) == ("hf_clip", "openai/clip-vit-large-patch14")
    assert (enc["text"].alias, enc["text"].model) == ("hf_text", "baichuan-inc/Baichuan-13B-Base")
    assert enc["text"].trust_remote_code and not enc["audio"].trust_remote_code
    assert paper.extract.gpus_per_actor == 1.0
    versions = {encoder_version(s) for s in enc.values()}  # no weights needed for a version
    assert len(versions) == 3


@pytest.mark.timeout(600)
def test_a_plugin_encoder_extracts_and_trains_end_to_end(ray_local, corpus, tmp_path):
    """``alias: module:Class`` is stored under the class's own alias, and the train stage finds that table."""
    from mer.config import job_from_dict
    from mer.encoders import feature_ref
    from mer.runner import run_job

    job = job_from_dict({
        "name": "plugin", "manifest": str(corpus), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "encoders": {"audio": {"alias": "extract_plugins:FragileEncoder", "batch_size": 2}},
        "stages": ["validate", "extract", "train"],
        "train": {"model": "unimodal", "epochs": 2, "seeds": [0], "hidden": 8, "baseline": None, "val_fraction": 0.0},
    })
    results = run_job(job, echo=lambda _: None)
    ref = feature_ref("audio", job.encoders["audio"])
    assert ref.table.startswith("features__fragile__") and results["extract"]["audio"]["table"] == ref.table
    config = json.loads((Path(results["train"]["checkpoints"][0]) / "config.json").read_text())
    assert config["read"]["tables"]["audio"]["table"] == ref.table
    preds = pd.read_csv(tmp_path / "run" / "predictions_unlabeled.csv")
    assert len(preds) == results["train"]["n_unlabeled"] > 0


def test_a_run_that_loses_a_node_reruns_only_the_clips_that_did_not_come_back(monkeypatch, tmp_path):
    """Beyond Ray's own retries (a node gone with its actor), extract_rows starts a new run for the rest."""
    import pickle

    from ray.exceptions import ActorUnavailableError

    from mer.extract import pipeline

    ids = [f"s{i:02d}" for i in range(10)]
    rows = pd.DataFrame({"sample_id": ids, "split": "train", "label": "happy", "video": None, "audio": None,
                         "text": [f"t{i}" for i in range(10)]})
    runs = []

    def result(batch_ids):
        return {"sample_id": np.array(batch_ids), "split": np.array(["train"] * len(batch_ids)),
                "label": np.array(["happy"] * len(batch_ids)), "text_source": np.array([""] * len(batch_ids)),
                "no_face": np.zeros(len(batch_ids), int),
                "error": np.array([""] * len(batch_ids)), "gpu": np.array([""] * len(batch_ids)),
                "result": np.array([pickle.dumps((np.ones(4, np.float32), None)) for _ in batch_ids], object)}

    class LostNode:
        def __init__(self, pending):
            self.pending = list(pending["sample_id"])
            runs.append(self.pending)

        def iter_batches(self, **_):
            yield result(self.pending[:4])
            if len(runs) == 1:
                raise ActorUnavailableError("The actor is temporarily unavailable: node lost", None)
            yield result(self.pending[4:])

    monkeypatch.setattr(pipeline, "build_dataset", lambda pending, *a: LostNode(pending))
    monkeypatch.setattr(pipeline, "plan_resources", lambda cfg, resources=None: pipeline.Plan(1, 0.0, 1.0, 1.0, 1))
    monkeypatch.setattr(pipeline, "live_resources", lambda: {"CPU": 1.0})
    spec = EncoderSpec(alias="extract_plugins:ProbeEncoder", seq_len=0)
    summary = extract_rows(rows, spec, str(tmp_path / "store"), ExtractConfig(write_batch=2, max_restarts=1),
                           progress=False)
    assert runs == [ids, ids[4:]]  # the second run only has what the first did not return
    assert summary["written"] == 10 and summary["failed"] == 0
    assert sorted(open_store(str(tmp_path / "store")).existing_ids("probe", summary["version"])) == ids
