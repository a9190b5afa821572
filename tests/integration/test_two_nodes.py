"""Two Ray nodes on 127.0.0.1, and the second one dies in the middle of an extraction or a training.

What a user has: ``ray start --head`` on one machine and ``ray start
--address`` on another, one GPU and one ``trainer`` slot (a custom resource)
each (here both on loopback, fake GPUs, each node in its own process group
and the cluster in its own ``--temp-dir``). The second node's raylet is killed
by pid while it works; what it held does not come back.

- Extraction: encoder actors run on both nodes. Ray cannot restart the lost
  actor anywhere, so mer must notice, run the clips that had not come back
  again on the node that is left, and end with every sample stored exactly
  once and none quarantined.
- Training: two seeds train at once, one per node (each worker asks for the
  node's one ``trainer`` slot). Ray Train restarts the lost seed's worker on
  the head once its slot is free, from the last checkpoint, and the seed ends
  with the weights of a run that never lost a node.

The driver runs in a subprocess: it joins a cluster without token auth, and a
``ray.init`` with ``RAY_AUTH_MODE=disabled`` in the pytest process would break
the local ``ray.init`` of later tests.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from mer.store import open_store

# Helpers of the real-head test: free ports, a clean environment, ending a `ray start --block` group.
from test_cluster import BIN, _clean_env, _free_port, _stop_group

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
N = 40
NODE_PORTS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "metrics-export-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port")

# Run as ``python -c DRIVER <address> <rows.csv> <store>``: one extraction, then one JSON line.
# Each batch of 2 clips keeps its (simulated) GPU busy for 1.2 s, so the kill lands mid-run.
DRIVER = textwrap.dedent("""\
    import json, sys
    import pandas as pd
    import ray
    from mer.config import EncoderSpec, ExtractConfig
    from mer.extract.pipeline import extract_rows

    address, rows_csv, store = sys.argv[1:4]
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    rows = pd.read_csv(rows_csv, dtype=str, keep_default_na=False).replace("", None)
    spec = EncoderSpec(alias="extract_plugins:SimGpuEncoder", model="1000:100", batch_size=2, seq_len=0,
                       num_frames=2)
    failed = []
    summary = extract_rows(rows, spec, store, ExtractConfig(num_actors=2, gpus_per_actor=1.0), on_failed=failed.extend,
                           progress=False)
    print("RESULT " + json.dumps({"summary": summary, "failed": failed}), flush=True)
""")


def _env() -> dict:
    """Nodes and driver: no token auth, workers import the test encoders from tests/."""
    return _clean_env(PYTHONPATH=str(TESTS), RAY_AUTH_MODE="disabled")


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    """``ray start --block`` with these arguments, in its own process group."""
    ports = [arg for name in NODE_PORTS for arg in (f"--{name}", str(_free_port()))]
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
             "--num-cpus", "2", "--num-gpus", "1", "--resources", json.dumps({"trainer": 1}), *ports, *args],
            env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


@pytest.fixture
def cluster(tmp_path):
    """A head and a second node (2 CPUs, 1 fake GPU each); yields ``(address, head, node2, logs)``."""
    temp = tempfile.mkdtemp(prefix="mer-2n-", dir="/tmp")  # short: Ray's unix sockets live under it
    logs = tmp_path / "logs"
    logs.mkdir()
    port = _free_port()
    head = _ray_start(["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp],
                      logs / "head.log")
    node2 = None
    try:
        deadline = time.monotonic() + 180
        while not (Path(temp) / "ray_current_cluster").is_file():
            assert head.poll() is None and time.monotonic() < deadline, (logs / "head.log").read_text()[-3000:]
            time.sleep(1)
        node2 = _ray_start(["--address", f"127.0.0.1:{port}"], logs / "node2.log")
        # `ray start` prints this once the node has registered with the head's GCS.
        while "Ray runtime started" not in (logs / "node2.log").read_text():
            assert node2.poll() is None and time.monotonic() < deadline, (logs / "node2.log").read_text()[-3000:]
            time.sleep(1)
        yield f"127.0.0.1:{port}", head, node2, logs
    finally:
        for proc in (node2, head):
            if proc is not None:
                _stop_group(proc, temp)


def _raylet_of(proc: subprocess.Popen) -> psutil.Process:
    return next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "raylet")


def _runs(proc: subprocess.Popen, *title: str) -> bool:
    """Whether a worker process under this node has all of ``title`` in its process title.

    Ray titles a worker process ``ray::<actor class>.<method>`` while it runs an
    actor task; Ray Data's encoder method is ``submit`` (``__init__`` while the
    actor starts, so a started actor is not mistaken for a working one).
    """
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if all(part in cmdline for part in title):
                return True
        except psutil.Error:
            pass
    return False


def _rows(manifest: Path, n: int) -> pd.DataFrame:
    """``n`` rows cycling over the corpus's clips under distinct ids (decoding stays real)."""
    base = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    rows = base.iloc[[i % len(base) for i in range(n)]].reset_index(drop=True)
    return rows.assign(sample_id=[f"s{i:03d}" for i in range(n)], split="unlabeled", label="",
                       video=[str(manifest.parent / v) for v in rows["video"]])


def _drive(script: str, args: list[str], logs: Path, node2: subprocess.Popen, ready) -> dict:
    """Run a driver script on the cluster, SIGKILL node 2's raylet once ``ready()``; the driver's RESULT.

    The driver must still be running when node 2 dies, and must end with exit
    code 0 (its log is in the assertion message otherwise).
    """
    with open(logs / "driver.log", "w") as err:
        driver = subprocess.Popen([sys.executable, "-c", script, *args], env=_env(), stdout=subprocess.PIPE,
                                  stderr=err, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not ready():
            assert driver.poll() is None and time.monotonic() < deadline, (logs / "driver.log").read_text()[-4000:]
            time.sleep(0.2)
        _raylet_of(node2).send_signal(signal.SIGKILL)
        assert driver.poll() is None  # node 2 died while the driver still ran
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, (logs / "driver.log").read_text()[-4000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.timeout(600)
def test_extraction_survives_losing_a_node(cluster, tmp_path):
    from mer.corpus.demo import make_demo_corpus

    address, head, node2, logs = cluster
    rows = _rows(make_demo_corpus(tmp_path / "demo", n_train=8, n_unlabeled=0, n_test=0, seed=3, workers=1), N)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    store = tmp_path / "store"
    seen: set[str] = set()

    def both_nodes_encode() -> bool:
        seen.update(name for name, proc in (("head", head), ("node2", node2)) if _runs(proc, "EncodeActor", ".submit"))
        return seen == {"head", "node2"}

    # node 2 goes with a batch in its actor
    result = _drive(DRIVER, [address, str(tmp_path / "rows.csv"), str(store)], logs, node2, both_nodes_encode)
    # the loss reached mer: the clips node 2 had not returned ran again in a new Ray Data run
    assert "remaining clips again" in (logs / "driver.log").read_text()

    assert result["failed"] == [] and result["summary"]["failed"] == 0  # nothing wrongly quarantined
    ids = open_store(store).read(result["summary"]["encoder"]).ids
    assert len(ids) == N and len(set(ids)) == N
    assert set(ids) == set(rows["sample_id"])


# Run as ``python -c TRAIN_DRIVER <address> <job.json>``: the train stage (two seeds at once), then,
# for each seed Ray Train had to resume, the same fit again on what is left of the cluster without a
# failure (``run_dir`` + "_clean"). One JSON line: seed -> (checkpoint, resumed_at, clean checkpoint).
TRAIN_DRIVER = textwrap.dedent("""\
    import json, sys
    import ray
    from mer.config import job_from_dict
    from mer.train import stage
    from mer.train.fit import fit

    address, job_json = sys.argv[1:3]
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    data = json.loads(open(job_json).read())
    job = job_from_dict(data)
    out = {}
    for seed, ckpt in zip(job.train.seeds, stage.run(job)["checkpoints"]):
        resumed = json.loads(open(f"{ckpt}/config.json").read())["resumed_at"][0]
        clean = None
        if resumed:
            again = job_from_dict({**data, "run_dir": data["run_dir"] + "_clean", "execution": {
                **data["execution"], "checkpoint_every_s": 10}})
            clean = str(fit(stage.fit_settings(again), "agt", seed, again.run_dir + f"/seed{seed}"))
        out[seed] = [ckpt, resumed, clean]
    print("RESULT " + json.dumps(out), flush=True)
""")


def _epochs_registered(ray_train: Path) -> dict[str, int]:
    """Per Ray Train run, the epochs held by the newest checkpoint its controller has registered.

    A restart resumes from that one (``checkpoint_manager_snapshot.json``), which
    can trail the folders on disk: reports are asynchronous and collected on the
    controller's poll.
    """
    done: dict[str, int] = {}
    for snapshot in ray_train.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError):  # being written
            continue
        if latest:
            done[snapshot.parent.name] = latest["metrics"]["epoch"] + 1
    return done


def _digest(path: str) -> str:
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.timeout(900)
def test_training_resumes_on_the_remaining_node(cluster, tmp_path):
    from synthetic import write_synthetic_features

    from mer.config import job_from_dict

    address, head, node2, logs = cluster
    data = {
        "name": "t", "manifest": str(tmp_path / "none.csv"), "store": str(tmp_path / "store"),
        "run_dir": str(tmp_path / "run"),
        "encoders": {"audio": {"alias": "logmel", "seq_len": 4}, "video": {"alias": "frames", "seq_len": 4},
                     "text": {"alias": "minilm", "seq_len": 0}},
        "stages": ["train"],
        "train": {"epochs": 16, "seeds": [0, 1], "hidden": 32, "heads": 2, "batch_size": 32, "patience": 40,
                  "baseline": None},
        # one worker per `trainer` slot, so the two seeds train on different nodes; report every epoch
        "execution": {"resources_per_worker": {"CPU": 1, "trainer": 1}, "checkpoint_every_s": 0,
                      "concurrent_fits": 2},
    }
    write_synthetic_features(job_from_dict(data), {"train": 300, "test": 60}, seed=0)
    (tmp_path / "job.json").write_text(json.dumps(data))
    ray_train = tmp_path / "run" / "ray_train"

    def both_seeds_checkpointed_one_per_node() -> bool:
        """Both seeds have a registered checkpoint of 3 of their 16 epochs; one trains on each node."""
        done = _epochs_registered(ray_train)
        return (len(done) == 2 and min(done.values()) >= 3 and _runs(node2, "RayTrainWorker")
                and _runs(head, "RayTrainWorker"))

    result = _drive(TRAIN_DRIVER, [address, str(tmp_path / "job.json")], logs, node2,
                    both_seeds_checkpointed_one_per_node)
    resumed = {seed: r for seed, r in result.items() if r[1]}
    assert len(resumed) == 1, result  # exactly the seed node 2 trained had to resume
    (checkpoint, resumed_at, clean), = resumed.values()
    assert 3 <= resumed_at[0] < 16  # from its last checkpoint, not from scratch
    history = json.loads((Path(checkpoint) / "config.json").read_text())["history"][0]
    assert [h["epoch"] for h in history] == list(range(16))
    assert _digest(checkpoint) == _digest(clean)
