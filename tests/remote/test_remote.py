"""Unit tests for mer/remote: address, token, packaging, error mapping (no cluster)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from mer.errors import MerError
from mer.remote import client as jc
from mer.remote import manage
from mer.config import absolute_paths
from mer.remote import submit as js
from mer.remote.submit import EXCLUDES, build_submission, is_local_address, runtime_env

JOB_YAML = """\
name: My Job!
manifest: corpus/manifest.csv
store: mer_store
run_dir: runs/my
truth: corpus/truth.csv
encoders:
  audio: {alias: logmel}
  text: {alias: hf_text, model: bert-base-uncased}
stages: [validate]
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a job file and a corpus folder; cwd inside it."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "my.yaml").write_text(JOB_YAML)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.csv").write_text("sample_id,split\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """No token anywhere Ray looks: env vars unset, HOME without .ray/."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- address -----------------------------------------------------------------


def test_address_flag_wins_over_env():
    env = {"RAY_ADDRESS": "http://env-head:8265"}
    assert jc.resolve_address("http://flag-head:8265/", env) == "http://flag-head:8265"


def test_address_from_env_and_scheme_added():
    assert jc.resolve_address(None, {"RAY_ADDRESS": "10.0.0.5:8265"}) == "http://10.0.0.5:8265"
    assert jc.resolve_address(None, {"RAY_ADDRESS": "https://head.example:443"}) == "https://head.example:443"


def test_no_address_is_one_line_error():
    with pytest.raises(jc.ClusterError) as err:
        jc.resolve_address(None, {})
    msg = str(err.value)
    assert "\n" not in msg and "--address" in msg and "RAY_ADDRESS" in msg


def test_explicit_address_hides_sdk_env_and_restores(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://other:8265")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    with jc._explicit_address():
        assert "RAY_ADDRESS" not in os.environ and "RAY_API_SERVER_ADDRESS" not in os.environ
    assert os.environ["RAY_ADDRESS"] == "http://other:8265"
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://api:8265"


def test_local_address():
    assert is_local_address("http://127.0.0.1:8265")
    assert is_local_address("http://localhost:1")
    assert not is_local_address("http://10.1.2.3:8265")


# -- token -------------------------------------------------------------------


def test_token_env_var_first(no_token, monkeypatch):
    (no_token / ".ray").mkdir(parents=True)
    (no_token / ".ray" / "auth_token").write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jc.read_token() == "from-env"


def test_token_from_home_file(no_token):
    (no_token / ".ray").mkdir(parents=True)
    (no_token / ".ray" / "auth_token").write_text("from-file\n")
    assert jc.read_token() == "from-file"


def test_token_from_path_var(no_token, tmp_path, monkeypatch):
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jc.read_token() == "from-path"


def test_no_token_is_none(no_token):
    assert jc.read_token() is None


def test_unreadable_token_path_is_one_line(no_token, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent/tok")
    with pytest.raises(jc.ClusterError, match=r"^RAY_AUTH_TOKEN_PATH=/nonexistent/tok cannot be read"):
        jc.read_token()


# -- error mapping -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        ("auth401", r"requires a token \(HTTP 401\): set RAY_AUTH_TOKEN"),
        ("auth403", r"rejected the token \(HTTP 403\)"),
        (ConnectionError("Failed to connect"), r"cannot reach the Ray dashboard at http://h:1"),
        (RuntimeError("Request failed with status code 404: Job x does not exist."), r"no job 'x' on http://h:1"),
        (RuntimeError("Request failed with status code 500: boom\nmore"), r"^http://h:1: Request failed .*boom$"),
    ],
)
def test_cluster_errors_are_one_line(exc, expected):
    from ray.exceptions import AuthenticationError

    if exc == "auth401":
        exc = AuthenticationError("Authentication required: Unauthorized\n\nlong text")
    elif exc == "auth403":
        exc = AuthenticationError("Authentication failed: Forbidden\n\nlong text")
    with pytest.raises(jc.ClusterError) as err, jc.cluster_errors("http://h:1", job_id="x"):
        raise exc
    assert "\n" not in str(err.value)
    assert re.search(expected, str(err.value))


# -- packaging -----------------------------------------------------------------


def test_submission_entrypoint_id_metadata(project):
    sub = build_submission("jobs/my.yaml", ["train.epochs=2"])
    assert re.fullmatch(r"mer-my-job-[0-9a-f]{8}", sub.submission_id)
    assert sub.metadata == {"mer_job": "My Job!"}
    args = shlex.split(sub.entrypoint)
    # the module, not the `mer` script: a head's PATH may lack it
    assert args[:6] == ["python", "-m", "mer.cli", "run", "jobs/my.yaml", "train.epochs=2"]
    # outputs always absolute, inputs only when they exist here
    assert f"store={project / 'mer_store'}" in args
    assert f"run_dir={project / 'runs/my'}" in args
    assert f"manifest={project / 'corpus/manifest.csv'}" in args
    assert not any(a.startswith("truth=") for a in args)  # corpus/truth.csv does not exist
    assert not any(a.startswith("encoders.text.model=") for a in args)  # a hub name
    assert sub.job.store == str(project / "mer_store")
    assert build_submission("jobs/my.yaml").submission_id != sub.submission_id


def test_runtime_env_excludes_data_and_ships_mer(project):
    sub = build_submission("jobs/my.yaml")
    env = sub.runtime_env
    assert env["working_dir"] == str(project)
    for pattern in (".venv/", ".git/", "mer_store/", "runs/", "demo_corpus/", "*.mp4"):
        assert pattern in env["excludes"]
    assert "/corpus/" in env["excludes"] and "/runs/my/" in env["excludes"]
    # no mer/ package in this folder: the local one travels as a py_module
    import mer

    assert env["py_modules"] == [str(Path(mer.__file__).resolve().parent)]
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"


def test_runtime_env_in_a_mer_checkout_has_no_py_modules(tmp_path):
    (tmp_path / "mer").mkdir()
    (tmp_path / "mer" / "__init__.py").write_text("")
    env = runtime_env(tmp_path)
    assert "py_modules" not in env
    assert env["excludes"][: len(EXCLUDES)] == EXCLUDES


def test_uris_are_left_alone(project):
    from mer.config import load_job

    job = load_job("jobs/my.yaml", ["store=s3://bucket/mer", "run_dir=/shared/runs/my"])
    assert not {"store", "run_dir"} & set(absolute_paths(job, project))


def test_job_outside_working_dir(project, tmp_path):
    (project / "sub").mkdir()
    with pytest.raises(MerError, match="outside the working dir"):
        build_submission("jobs/my.yaml", working_dir="sub")


def test_bad_job_fails_before_any_network(project, monkeypatch, capsys):
    """A bad override is a one-line error; connect() is never reached."""
    monkeypatch.setattr(jc, "connect", lambda *a, **k: pytest.fail("connected"))
    monkeypatch.setattr(sys, "argv", ["mer", "submit", "jobs/my.yaml", "train.epochz=3", "--address", "http://h:1"])
    from mer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: jobs/my.yaml: unknown key 'train.epochz'") and "\n" not in err


def test_cli_without_address(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(sys, "argv", ["mer", "list"])
    from mer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no Ray cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS=http://HEAD:8265"
    )


def test_format_table():
    rows = [manage.JobRow("mer-a-1", "RUNNING", "2026-01-01 00:00:00", "a")]
    lines = manage.format_table(rows).splitlines()
    assert lines[0].split() == ["SUBMISSION_ID", "STATUS", "START", "(UTC)", "NAME"]
    assert lines[1].split() == ["mer-a-1", "RUNNING", "2026-01-01", "00:00:00", "a"]


def test_store_options_travel_as_env_var(project):
    import json

    sub = build_submission("jobs/my.yaml", ["store_options.aws_endpoint=http://minio:9000"])
    assert json.loads(sub.runtime_env["env_vars"]["MER_STORE_OPTIONS"]) == {"aws_endpoint": "http://minio:9000"}
    assert "MER_STORE_OPTIONS" not in build_submission("jobs/my.yaml").runtime_env["env_vars"]


# -- submit retries, launch failures -----------------------------------------------

NO_AGENT = RuntimeError(
    "Request failed with status code 500: No available agent to submit job, please try again later."
)


class FakeClock:
    """``sleep`` advances ``now``; nothing really waits."""

    def __init__(self):
        self.now = 0.0
        self.waits = []

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.now += seconds


class FakeJobsClient:
    """Answers ``submit_job`` with ``NO_AGENT`` ``busy`` times, then an id; serves one job's status and logs."""

    def __init__(self, busy=0, status="SUCCEEDED", logs=""):
        from ray.job_submission import JobStatus

        self.busy, self.calls, self.logs = busy, 0, logs
        self.status = JobStatus(status)

    def submit_job(self, **kwargs):
        self.calls += 1
        if self.calls <= self.busy:
            raise NO_AGENT
        return kwargs["submission_id"]

    def get_job_info(self, job_id):
        return None

    async def tail_job_logs(self, job_id):
        yield self.logs

    def get_job_status(self, job_id):
        return self.status

    def get_job_logs(self, job_id):
        return self.logs


def _fake_cluster(monkeypatch, client):
    monkeypatch.setattr(jc, "connect", lambda address=None: (client, "http://head:8265"))
    monkeypatch.setattr(manage, "connect", lambda address=None: (client, "http://head:8265"))


def test_submit_retries_a_starting_head(project, monkeypatch):
    client = FakeJobsClient(busy=3)
    _fake_cluster(monkeypatch, client)
    monkeypatch.setattr(js.time, "sleep", lambda s: None)
    sub = build_submission("jobs/my.yaml")
    assert js.submit(sub) == sub.submission_id
    assert client.calls == 4


def test_retry_gives_up_after_its_budget_with_one_line():
    clock = FakeClock()
    calls = []

    def busy():
        calls.append(clock.now)
        raise NO_AGENT

    with pytest.raises(jc.ClusterError) as err:
        js.retry_transient(busy, "http://head:8265", budget_s=30, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # doubling, capped at 8 s, within 30 s
    assert len(calls) == 7 and clock.now <= 30
    text = str(err.value)
    assert "\n" not in text and text.startswith("http://head:8265: the head has no job agent ready after 7 tries")


def test_other_refusals_are_not_retried():
    calls = []

    def refused():
        calls.append(1)
        raise RuntimeError("Request failed with status code 400: bad runtime_env")

    with pytest.raises(RuntimeError, match="400"):
        js.retry_transient(refused, "http://head:8265", sleep=lambda s: pytest.fail("slept"))
    assert calls == [1]


@pytest.mark.parametrize(
    "log_line",
    ["/bin/sh: 1: mer: not found", "bash: python: command not found", "/usr/bin/python: No module named mer"],
)
def test_follow_names_a_head_without_mer_in_one_line(monkeypatch, log_line):
    _fake_cluster(monkeypatch, FakeJobsClient(status="FAILED", logs=f"{log_line}\n"))
    with pytest.raises(jc.ClusterError) as err:
        manage.follow("mer-q-1", echo=lambda text: None, poll_s=0)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"mer-q-1 on http://head:8265: the cluster could not start mer ({log_line})")
    assert "install mer and its dependencies on every node" in text


def test_follow_leaves_other_failures_to_the_exit_code(monkeypatch):
    _fake_cluster(monkeypatch, FakeJobsClient(status="FAILED", logs="ValueError: something else\n"))
    assert manage.follow("mer-q-1", echo=lambda text: None, poll_s=0) == "FAILED"
    _fake_cluster(monkeypatch, FakeJobsClient(status="SUCCEEDED", logs="/bin/sh: 1: mer: not found\n"))
    assert manage.follow("mer-q-1", echo=lambda text: None, poll_s=0) == "SUCCEEDED"
