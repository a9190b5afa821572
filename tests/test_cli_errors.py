"""One error path: every bad input a new user tried is one line ``error: ...`` naming what is wrong, exit code 2.

Each case builds its bad input in a temporary folder and runs the console entry
point in this process (``mer.cli.main``), so the exit code and the exact
stderr are what a shell would see. No Ray is started: each failure must come
before any work.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mer_cli import run_mer

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]



def _store(tmp: Path) -> Path:
    """A store with one small feature table (logmel, 12 rows)."""
    from mer.store import open_store

    store = open_store(tmp / "store")
    rng = np.random.default_rng(0)
    store.upsert("logmel", "abcdef0123456789", {
        "sample_id": [f"s{i}" for i in range(12)], "split": ["train"] * 12, "label": ["sad"] * 12,
        "vector": rng.normal(size=(12, 4)).astype(np.float32)})
    return tmp / "store"


def _run(tmp: Path, damage: str) -> Path:
    """A run folder whose predictor is one ``linear`` checkpoint, its weights or config damaged as asked."""
    from mer.config import TrainConfig
    from mer.models import build_model
    from mer.runfolder import ENSEMBLE, FinalPredictor, RunFolder
    from mer.train.checkpoint import save_weights

    run = RunFolder(tmp / "run")
    ckpt = run.checkpoints / "linear_s0_abc"
    ckpt.mkdir(parents=True)
    save_weights(build_model("linear", {"audio": 4}, 6, TrainConfig()), ckpt / "model.safetensors")
    (ckpt / "config.json").write_text(json.dumps({"model": "linear", "dims": {"audio": 4}, "labels": LABELS,
                                                  "train": {}, "weights": ["model.safetensors"]}))
    run.publish_final(FinalPredictor(ENSEMBLE, LABELS, {"linear": [ckpt]}, seeds=[0]), {})
    if damage == "weights":
        (ckpt / "model.safetensors").write_bytes(b"\x00" * 20)
    elif damage == "no weights":
        (ckpt / "model.safetensors").unlink()
    elif damage == "config":
        (ckpt / "config.json").write_text("{\"model\": ")
    elif damage == "no config":
        (ckpt / "config.json").unlink()
    return run.path


def _wav(tmp: Path) -> Path:
    import wave

    path = tmp / "clip.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes((np.sin(np.arange(16000) / 8) * 8000).astype(np.int16).tobytes())
    return path


def _predictions(tmp: Path, change=None) -> tuple[Path, Path]:
    """A predictions CSV and its truth (10 test rows); ``change`` edits the predictions frame first."""
    ids = [f"t{i}" for i in range(10)]
    truth = pd.DataFrame({"sample_id": ids, "label": [LABELS[i % 6] for i in range(10)]})
    probs = np.full((10, 6), 1 / 6)
    pred = pd.DataFrame({"sample_id": ids, "label": truth["label"], **{f"p_{c}": probs[:, i] for i, c in enumerate(LABELS)}})
    pred = change(pred) if change else pred
    pred.to_csv(tmp / "preds.csv", index=False)
    truth.to_csv(tmp / "truth.csv", index=False)
    return tmp / "preds.csv", tmp / "truth.csv"


def _job(tmp: Path, **changes) -> Path:
    import yaml

    job = {"name": "bad", "manifest": str(tmp / "m.csv"), "store": str(tmp / "store"), "run_dir": str(tmp / "run"),
           "encoders": {"audio": {"alias": "logmel"}, "text": {"alias": "minilm"}},
           "stages": ["validate", "extract", "train", "selftrain"], **changes}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    return tmp / "job.yaml"


def _delete_data(store: Path) -> Path:
    for data in (store / "features__logmel__abcdef01.lance" / "data").iterdir():
        data.unlink()
    return store


CASES = {
    "damaged safetensors in a run": (
        lambda t: ["predict", "--run", _run(t, "weights"), _wav(t), "--out", "-"],
        r"error: .*/checkpoints/linear_s0_abc/model.safetensors: cannot load the weights \("),
    "missing safetensors in a run": (
        lambda t: ["predict", "--run", _run(t, "no weights"), _wav(t), "--out", "-"],
        r"error: .*/checkpoints/linear_s0_abc/model.safetensors: missing \(the checkpoint's weights\)$"),
    "damaged config.json in a run": (
        lambda t: ["predict", "--run", _run(t, "config"), _wav(t), "--out", "-"],
        r"error: .*/checkpoints/linear_s0_abc/config.json: damaged \("),
    "missing config.json in a run": (
        lambda t: ["predict", "--run", _run(t, "no config"), _wav(t), "--out", "-"],
        r"error: .*/checkpoints/linear_s0_abc: not a checkpoint folder \(no config.json\)$"),
    "--out naming a folder": (
        lambda t: ["predict", "--run", _run(t, ""), _wav(t), "--out", t],
        r"error: --out .*: is a folder; name the file to write"),
    "query like -k 0": (
        lambda t: ["query", "like", "s0", "--encoder", "logmel", "-k", "0", "--store", _store(t)],
        r"error: Invalid value for '-k': 0 is not in the range x>=1\. \(see 'mer query like -h'\)$"),
    "--where naming an unknown column": (
        lambda t: ["query", "like", "s0", "--encoder", "logmel", "--where", "speaker = 'x'", "--store", _store(t)],
        r"error: --where \"speaker = 'x'\": .*speaker.*\(columns: sample_id, split, label, encoder, encoder_version, "
        r"extracted_at\)$"),
    "a store whose data files were deleted": (
        lambda t: ["query", "tables", "--store", _delete_data(_store(t))],
        r"error: store .*: table features__logmel__abcdef01 cannot be read \(.*\): its files are missing or damaged$"),
    "demo-data --n-train -5": (
        lambda t: ["demo-data", t / "demo", "--n-train", "-5"],
        r"error: Invalid value for '--n-train': -5 is not in the range x>=0\. \(see 'mer demo-data -h'\)$"),
    "a label column with a missing value": (
        lambda t: ["evaluate", *_eval_args(t, lambda p: p.assign(label=p["label"].where(p.index != 3, None)))],
        r"error: .*preds.csv: row 5 \(sample_id 't3'\): no label$"),
    "finetune plan --model some.csv": (
        lambda t: ["finetune", "plan", "--model", _csv(t)],
        r"error: --model .*some.csv: not a JSON model config \("),
    "upper-cased labels": (
        lambda t: ["evaluate", *_eval_args(t, lambda p: p.assign(label=p["label"].str.upper()))],
        r"error: .*preds.csv: row 2 \(sample_id 't0'\).* label 'NEUTRAL' is not one of neutral, angry, happy, sad, "
        r"worried, surprise \(labels are matched exactly\)$"),
    "duplicated sample ids": (
        lambda t: ["evaluate", *_eval_args(t, lambda p: pd.concat([p, p.iloc[:5]], ignore_index=True))],
        r"error: .*preds.csv: row 12 \(sample_id 't0'\).*: sample_id appears more than once$"),
    "half the test rows missing": (
        lambda t: ["evaluate", *_eval_args(t, lambda p: p.iloc[:5])],
        r"error: .*preds.csv: 5 of 10 labeled samples of .*truth.csv have no prediction \(t5, t6, t7 and 2 more\); "
        r"pass --allow-missing to score the others$"),
    "an unknown label": (
        lambda t: ["evaluate", *_eval_args(t, lambda p: p.assign(label=p["label"].replace("sad", "calm")))],
        r"error: .*preds.csv: row 5 \(sample_id 't3'\).*: label 'calm' is not one of"),
    "NaN probabilities": (
        lambda t: ["evaluate", *_eval_args(t, lambda p: p.assign(p_sad=p["p_sad"].where(p.index != 2, np.nan)))],
        r"error: .*preds.csv: row 4 \(sample_id 't2'\): p_sad is not a probability in \[0, 1\]$"),
    "evaluate --out over a run's own metrics.json": (
        lambda t: ["evaluate", *_eval_args(t), "--out", _run_with_metrics(t)],
        r"error: --out .*/run: is a run folder whose metrics.json the evaluate stage wrote; choose another folder, "
        r"or pass --force to replace it$"),
    "a misspelt model": (
        lambda t: ["run", _job(t, train={"model": "agtt"})],
        r"error: train.model: unknown model 'agtt' \(known: agt, attention, concat, unimodal, linear\)$"),
    "a misspelt vote": (
        lambda t: ["run", _job(t, selftrain={"voting": "prior-knowledge"})],
        r"error: selftrain.voting: unknown rule 'prior-knowledge' \(known: prior, majority, soft\)$"),
    "a misspelt encoder": (
        lambda t: ["run", _job(t, encoders={"audio": {"alias": "hubert"}})],
        r"error: encoders.audio: unknown encoder 'hubert' \(known: .*; or module:Class\)$"),
    "a misspelt self-training model": (
        lambda t: ["submit", _job(t, selftrain={"models": ["agt", "atention", "unimodal"]}), "--address",
                   "http://127.0.0.1:1"],
        r"error: selftrain.models: unknown model 'atention'"),
    "a misspelt robustness condition": (
        lambda t: ["run", _job(t, stages=["robustness"], robustness={"conditions": ["whit@10"]})],
        r"error: .*whit"),
    "a typo'd store path": (
        lambda t: ["predict", "--checkpoint", _run(t, "") / "checkpoints" / "linear_s0_abc", "--split", "test",
                   "--store", t / "stroe", "--out", "-"],
        r"error: store '.*stroe' does not exist"),
}


def _csv(tmp: Path) -> Path:
    (tmp / "some.csv").write_text("a,b\n1,2\n")
    return tmp / "some.csv"


def _eval_args(tmp: Path, change=None) -> list:
    pred, truth = _predictions(tmp, change)
    return [pred, "--truth", truth]


def _run_with_metrics(tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    (run / "metrics.json").write_text("{}")
    return run


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    build, pattern = CASES[case]
    code, _, stderr = run_mer(capsys, *build(tmp_path))
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert __import__("re").match(pattern, stderr.strip()), stderr
    if case.startswith("a misspelt") or case == "a typo'd store path":
        assert not (tmp_path / "run" / "config.yaml").exists() or case == "a typo'd store path"
        assert not (tmp_path / "stroe").exists()


def test_verbose_adds_the_traceback(tmp_path, capsys):
    code, _, stderr = run_mer(capsys, "-v", "predict", "--run", _run(tmp_path, "weights"), _wav(tmp_path), "--out", "-")
    assert code == 2 and "Traceback" in stderr and stderr.strip().splitlines()[-1].startswith("error: ")


def test_out_dash_writes_a_stored_split_to_stdout(tmp_path, capsys, monkeypatch):
    """``--out -`` on the --split path prints the CSV (status lines on stderr) and writes no file named '-'."""
    monkeypatch.chdir(tmp_path)
    frame = pd.DataFrame({"sample_id": ["a"], "label": ["sad"], **{f"p_{c}": [1 / 6] for c in LABELS}})
    monkeypatch.setattr("mer.train.predict.predict", lambda checkpoints, store, split: frame)
    code, stdout, stderr = run_mer(capsys, "predict", "--checkpoint", tmp_path, "--split", "test", "--out", "-")
    assert code == 0 and stdout.splitlines()[0].startswith("sample_id,label,p_neutral") and "next:" in stderr
    assert not (tmp_path / "-").exists()


def test_labels_option_strips_spaces(tmp_path, capsys):
    from mer.corpus.demo import write_mp4

    frames = np.zeros((12, 16, 16, 3), np.uint8)
    write_mp4(tmp_path / "a.mp4", frames, np.zeros(16000, np.float32))
    pd.DataFrame({"sample_id": ["a"], "video": ["a.mp4"], "label": ["sad"], "split": ["train"]}).to_csv(
        tmp_path / "m.csv", index=False)
    code, stdout, _ = run_mer(capsys, "corpus", "validate", tmp_path / "m.csv", "--labels", "angry, sad")
    assert code == 0 and "1 usable rows" in stdout


def test_every_command_has_an_example():
    import click

    from mer.cli import cli

    def walk(group, prefix):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, f"{prefix} {name}")
            else:
                yield f"{prefix} {name}", command

    missing = [name for name, command in walk(cli, "mer") if "Example" not in (command.help or "")]
    assert missing == []
