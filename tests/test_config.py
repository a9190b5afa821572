"""Job YAML parsing, overrides and their one-line errors."""

from pathlib import Path

import pytest

from mer.config import ConfigError, EncoderSpec, job_from_dict, load_job, parse_overrides

JOB = """
name: t
manifest: demo/manifest.csv
encoders:
  audio: logmel
  text: {alias: minilm, batch_size: 4}
stages: [extract, train]
train: {model: agt, epochs: 3}
"""


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    return path


def test_load_builds_typed_sections(job_file):
    job = load_job(job_file)
    assert job.encoders["audio"] == EncoderSpec(alias="logmel")
    assert job.encoders["text"].batch_size == 4
    assert job.train.epochs == 3 and job.train.lr == 1e-3
    assert job.store == "mer_store"


def test_overrides_reach_nested_and_top_level_keys(job_file):
    job = load_job(
        job_file,
        ["train.epochs=5", "store=s3://bucket/mer", "train.seeds=[7, 8]", "selftrain.threshold=0.95",
         "encoders.audio.seq_len=4", "encoders.video=frames"],
    )
    assert job.train.epochs == 5
    assert job.store == "s3://bucket/mer"
    assert job.train.seeds == [7, 8]
    assert job.selftrain.threshold == 0.95
    assert job.encoders["audio"].alias == "logmel" and job.encoders["audio"].seq_len == 4
    assert job.encoders["video"].alias == "frames"


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.epoch=5"], "unknown key 'train.epoch'"),
        (["train.epochs=many"], "train.epochs: expected int"),
        (["execution.use_gpu=3"], "execution.use_gpu: expected true/false"),
        (["train.num_workers=2"], "'train.num_workers' moved to 'execution.num_workers'"),
        (["stages=[extract, dance]"], "unknown stage 'dance'"),
        (["encoders.smell=logmel"], "unknown role 'smell'"),
        (["epochs"], "not key=value"),
    ],
)
def test_bad_overrides_name_the_key(job_file, override, message):
    with pytest.raises(ConfigError) as err:
        load_job(job_file, override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_float_accepts_int_but_int_rejects_bool():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=s3://x"]) == [
        ("a", 1), ("b", 0.5), ("c", True), ("d", "s3://x")]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_job(tmp_path / "list.yaml")


def test_missing_required_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\n")
    with pytest.raises(ConfigError, match="missing key 'manifest'"):
        load_job(path)


def test_resolved_yaml_round_trips(job_file, tmp_path):
    job = load_job(job_file, ["train.epochs=9"])
    again = tmp_path / "again.yaml"
    again.write_text(job.to_yaml())
    assert load_job(again) == job


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """PyYAML reads ``5e-5`` as a string (YAML 1.1); a float key takes it, a bad one still errors."""
    job = job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"lr": "5e-5"}})
    assert job.finetune.lr == 5e-5
    with pytest.raises(ConfigError, match="finetune.lr: expected float"):
        job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"lr": "fast"}})


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_file_loads_and_passes_the_checks(path):
    """What mer run / mer submit check before any work: every key, every registry name."""
    from mer.config import load_job
    from mer.runner import check_job

    check_job(load_job(path))
