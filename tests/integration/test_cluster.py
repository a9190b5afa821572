"""A real Ray head on 127.0.0.1 with token auth; mer submit/status/logs/stop/list against it.

What a user does: ``ray start --head`` (here with ``--block`` in its own
process group and its own ``--temp-dir``, so no other Ray instance on the
machine is touched), then ``mer submit jobs/quickstart.yaml --follow`` on a
small demo corpus. The assertions follow the stages the quickstart job lists
today: every listed stage must have left its outputs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import requests

from mer.config import load_job

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUICKSTART = "jobs/quickstart.yaml"
# Shrink the expensive stages; every key exists whether or not its stage runs.
SMALL = ["train.epochs=2", "train.seeds=[0]", "selftrain.rounds=1", "extract.num_actors=1", "train.audio_augment=''"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict:
    """This venv first on PATH; no ambient Ray address or token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class Head:
    """A running head: its dashboard URL, token, metrics port and a client env."""

    url: str
    token: str
    metrics_port: int
    env: dict  # for mer/ray CLI calls: RAY_AUTH_TOKEN set
    proc: subprocess.Popen
    temp_dir: Path

    def diagnose(self) -> str:
        """Whether the head still runs, and the end of its logs (for failure messages)."""
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        tails = []
        for name in ("ray_start.log", "session_latest/logs/dashboard.log", "session_latest/logs/raylet.out"):
            path = self.temp_dir / name
            if path.is_file():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return f"ray head {state}\n" + "\n".join(tails)

    def mer(self, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "mer"), *args], cwd=REPO, env=env or self.env, capture_output=True, text=True, timeout=timeout
        )

    def client(self):
        from ray.job_submission import JobSubmissionClient

        from mer.remote.client import _explicit_address

        with _explicit_address():  # an ambient RAY_ADDRESS must not redirect the SDK
            return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})


def _stop_group(proc: subprocess.Popen, temp_dir: str) -> None:
    """End the head's process group, then any descendant that left it (by pid)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Workers and job drivers run in sessions of their own; they are still ours.
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(descendants, timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


HEAD_PORTS = (
    "port", "dashboard-port", "metrics-export-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
)


def _start_head(token: str, wait_s: float = 300) -> Head:
    """One ``ray start --head --block`` attempt; returns once the node is up and the Jobs API answers.

    Raises:
        RuntimeError: the head exited or did not come up (its group is ended first).
    """
    # Short path: Ray's unix sockets live under the temp dir (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="mer-ray-", dir="/tmp"))
    ports = {name: _free_port() for name in HEAD_PORTS}
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
        "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
        "--temp-dir", str(temp_dir), "--disable-usage-stats",
    ]
    for name, port in ports.items():
        cmd += [f"--{name}", str(port)]
    with open(temp_dir / "ray_start.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            # Token auth on, as a production head; no Serve here, so no SIGTERM drain.
            env=_clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = Head(f"http://127.0.0.1:{ports['dashboard-port']}", token, ports["metrics-export-port"],
                _clean_env(RAY_AUTH_TOKEN=token), proc, temp_dir)
    deadline = time.monotonic() + wait_s
    # `ray start` writes ray_current_cluster once its raylet has registered.
    while proc.poll() is None and time.monotonic() < deadline:
        if (temp_dir / "ray_current_cluster").is_file():
            try:
                r = requests.get(f"{head.url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=10)
                if r.status_code == 200:
                    return head
            except requests.RequestException:
                pass
        time.sleep(1)
    why = head.diagnose()
    _stop_group(proc, str(temp_dir))
    raise RuntimeError(why)


@pytest.fixture(scope="module")
def head():
    """A head with token auth on free ports, torn down even on failure.

    Ray gives a new raylet a fixed 30 s to register with the GCS; on a machine
    saturated by other work that can fail, so startup is tried up to 3 times.
    """
    token = secrets.token_hex(16)
    errors = []
    for _ in range(3):
        try:
            started = _start_head(token)
            break
        except RuntimeError as exc:
            errors.append(str(exc))
    else:
        pytest.fail("ray start --head failed 3 times:\n" + "\n".join(errors)[-4000:])
    try:
        yield started
    finally:
        _stop_group(started.proc, str(started.temp_dir))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "demo"
    done = subprocess.run(
        [str(BIN / "mer"), "demo-data", str(out), "--n-train", "12", "--n-unlabeled", "12", "--n-test", "12"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def quickstart(head, corpus, tmp_path_factory):
    """Run the quickstart job through ``mer submit --follow``; return what it left.

    While it runs, the head's Prometheus endpoint is read every 2 s: the
    training gauges a fit publishes exist only while its worker lives.
    """
    out = tmp_path_factory.mktemp("quickstart")
    args = [
        f"manifest={corpus / 'manifest.csv'}", f"truth={corpus / 'unlabeled_truth.csv'}",
        f"store={out / 'store'}", f"run_dir={out / 'run'}", *SMALL,
    ]
    command = [str(BIN / "mer"), "submit", QUICKSTART, *args, "--address", head.url, "--follow"]
    seen: set[str] = set()
    with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=head.env, stdout=stdout, stderr=stderr, text=True)
        deadline = time.monotonic() + 1200
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                seen |= {line.split("{")[0] for line, _ in _prometheus_samples(head.metrics_port, r"ray_mer_\w+")}
            except requests.RequestException:
                pass
            time.sleep(2)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    done = subprocess.CompletedProcess(command, proc.returncode, (out / "stdout").read_text(), (out / "stderr").read_text())
    job = load_job(REPO / QUICKSTART, args)
    ids = re.findall(r"submitted (mer-quickstart-[0-9a-f]{8})", done.stdout)
    return done, job, ids[0] if ids else None, seen


def _roles(extract_summary: dict):
    """(role, summary) pairs of the extract stage (the runner adds a ``seconds`` key)."""
    return [(role, value) for role, value in extract_summary.items() if isinstance(value, dict)]


@pytest.mark.timeout(1500)
def test_submit_follow_succeeds_and_leaves_outputs(head, quickstart, corpus):
    done, job, job_id, _ = quickstart
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:] + head.diagnose()
    assert job_id, done.stdout
    assert f"{job_id}: SUCCEEDED" in done.stdout
    assert "== stage" in done.stdout  # the job's own log lines were streamed

    run_dir = Path(job.run_dir)
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert list(stages) == job.stages
    assert (run_dir / "config.yaml").is_file()
    clean = pd.read_csv(run_dir / "manifest_clean.csv", dtype={"sample_id": str}) if "validate" in job.stages else None

    if clean is not None:
        manifest = pd.read_csv(corpus / "manifest.csv", dtype={"sample_id": str})
        quarantined = pd.read_csv(run_dir / "quarantine.csv", dtype={"sample_id": str})
        assert sum(stages["validate"]["rows"].values()) == len(clean)
        assert set(clean["sample_id"]) | set(quarantined["sample_id"]) == set(manifest["sample_id"])
    if "extract" in job.stages:
        import lancedb

        db = lancedb.connect(job.store)
        for role, summary in _roles(stages["extract"]):
            ids = db.open_table(summary["table"]).to_arrow().column("sample_id").to_pylist()
            assert len(ids) == len(set(ids)), f"{role}: duplicate rows"
            assert len(ids) == summary["written"] + summary["skipped"] > 0
            if clean is not None:
                has_role = clean[clean[f"has_{role}"].astype(str).str.lower() == "true"]
                assert set(ids) <= set(has_role["sample_id"])
                assert len(ids) + summary["failed"] == len(has_role)
    if "train" in job.stages:
        pred = pd.read_csv(run_dir / "predictions_test.csv", dtype={"sample_id": str})
        assert len(pred) == pred["sample_id"].nunique() > 0
        if clean is not None:
            assert set(pred["sample_id"]) <= set(clean.loc[clean["split"] == "test", "sample_id"])
        probs = pred[[f"p_{label}" for label in job.labels]].to_numpy()
        assert abs(probs.sum(axis=1) - 1).max() < 1e-4
    if "evaluate" in job.stages:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert 0.0 <= metrics["weighted_f1"] <= 1.0
        assert (run_dir / "confusion_test.png").stat().st_size > 0
    if "report" in job.stages:
        assert (run_dir / "report.md").read_text().strip()


@pytest.mark.timeout(1500)  # runs the quickstart job itself when selected alone
def test_job_visible_in_ray_job_list_and_mer_list(head, quickstart):
    job_id = quickstart[2]
    assert job_id
    # Ray's own CLI sends the token only with RAY_AUTH_MODE=token in the client env.
    env = dict(head.env, RAY_AUTH_MODE="token")
    done = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", head.url], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"submission_id='{job_id}'" in done.stdout + done.stderr
    assert "'mer_job': 'quickstart'" in done.stdout + done.stderr

    listed = head.mer("list", "--address", head.url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert row.split()[1] == "SUCCEEDED" and row.split()[-1] == "quickstart"

    status = head.mer("status", job_id, "--address", head.url)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED")
    logs = head.mer("logs", job_id, "--address", head.url)
    assert "== stage" in logs.stdout


def _prometheus_samples(port: int, name_pattern: str) -> list[tuple[str, float]]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = []
    for line in text.splitlines():
        match = re.match(rf"({name_pattern})(\{{[^}}]*\}})?\s+(\S+)", line)
        if match:
            out.append((match.group(0), float(match.group(3))))
    return out


@pytest.mark.timeout(1500)
def test_metrics_endpoint_exposes_mer_metrics(head, quickstart):
    """The node's Prometheus endpoint (``--metrics-export-port``) shows what the stages published."""
    done, job, _, seen = quickstart
    assert done.returncode == 0
    # Gauges exist while the worker that set them lives: they were read during the run.
    assert {"ray_mer_train_epoch", "ray_mer_train_loss", "ray_mer_train_val_waf"} <= seen, sorted(seen)
    # A counter outlives the worker that counted.
    assert "extract" in job.stages
    pattern = r"ray_mer_extract_samples_total"
    deadline = time.monotonic() + 90  # metrics are pushed to the agent every few seconds
    while not (samples := _prometheus_samples(head.metrics_port, pattern)) and time.monotonic() < deadline:
        time.sleep(3)
    assert samples, f"no {pattern} at http://127.0.0.1:{head.metrics_port}/metrics"
    # one counter series per encoder actor process; summed per role = rows written
    stages = json.loads((Path(job.run_dir) / "stages.json").read_text())["stages"]
    for role, summary in _roles(stages["extract"]):
        counted = sum(value for line, value in samples if f'role="{role}"' in line)
        assert counted == summary["written"] > 0, (role, samples)
    # every epoch of every fit of the run, per model (linear counts its one solve)
    epochs: dict[str, int] = {}
    for config in (Path(job.run_dir) / "checkpoints").glob("*/config.json"):
        record = json.loads(config.read_text())
        epochs[record["model"]] = epochs.get(record["model"], 0) + sum(len(h) for h in record["history"])
    counted = _prometheus_samples(head.metrics_port, r"ray_mer_train_epochs_total")
    assert {m: sum(v for line, v in counted if f'model="{m}"' in line) for m in epochs} == epochs


@pytest.mark.timeout(450)
def test_stop_running_job(head):
    client = head.client()
    job_id = client.submit_job(
        entrypoint=f"{sys.executable} -c \"import time; print('sleeping', flush=True); time.sleep(600)\"",
        metadata={"mer_job": "sleeper"},
    )
    deadline = time.monotonic() + 240
    while str(client.get_job_status(job_id)) != "RUNNING":
        assert time.monotonic() < deadline, client.get_job_info(job_id)
        time.sleep(1)
    stopped = head.mer("stop", job_id, "--address", head.url)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"{job_id}: STOPPED")
    assert str(client.get_job_status(job_id)) == "STOPPED"
    followed = head.mer("logs", job_id, "--address", head.url, "--follow")
    assert followed.returncode == 1
    assert "sleeping" in followed.stdout and f"{job_id}: STOPPED" in followed.stdout


@pytest.mark.timeout(300)
def test_failed_job_follow_exits_1(head, tmp_path):
    done = head.mer(
        "submit", QUICKSTART, f"manifest={tmp_path / 'missing.csv'}", f"run_dir={tmp_path / 'run'}",
        f"store={tmp_path / 'store'}", "--address", head.url, "--follow", timeout=240,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"mer-quickstart-[0-9a-f]{8}: FAILED", done.stdout)


@pytest.mark.timeout(120)
def test_bad_address_is_one_line_error(head):
    port = _free_port()
    done = head.mer("list", "--address", f"http://127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot reach the Ray dashboard at http://127.0.0.1:{port}: is the head running and is this "
        "its dashboard port (default 8265)? Set --address or RAY_ADDRESS"
    )
    assert done.stdout == ""


@pytest.mark.timeout(120)
def test_missing_or_wrong_token_is_one_line_error(head, tmp_path):
    no_token = _clean_env(HOME=str(tmp_path))  # no RAY_AUTH_TOKEN, no ~/.ray/auth_token
    done = head.mer("submit", QUICKSTART, "--address", head.url, env=no_token)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {head.url} requires a token (HTTP 401): set RAY_AUTH_TOKEN")

    wrong = head.mer("list", "--address", head.url, env=_clean_env(HOME=str(tmp_path), RAY_AUTH_TOKEN="wrong"))
    assert wrong.returncode == 2
    assert wrong.stderr.strip().startswith(f"error: {head.url} rejected the token (HTTP 403)")
    assert len(wrong.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(120)
def test_unknown_job_id_is_one_line_error(head):
    done = head.mer("status", "mer-nope-00000000", "--address", head.url)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no job 'mer-nope-00000000' on {head.url} (mer list shows the jobs)"
