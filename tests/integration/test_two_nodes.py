"""Two Ray nodes on 127.0.0.1, and the second one dies in the middle of an extraction.

What a user has: ``ray start --head`` on one machine and ``ray start
--address`` on another (here both on loopback, each in its own process
group). Encoder actors run on both nodes; the second node's raylet is killed
while they work; Ray restarts the lost actor and retries the lost tasks on
the head, and the store ends with every sample exactly once and nothing
quarantined.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from mer.config import EncoderSpec, ExtractConfig
from mer.store import open_store

# Helpers of the real-head test: free ports, a clean environment, ending a `ray start --block` group.
from test_cluster import BIN, _clean_env, _free_port, _stop_group

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
N = 40
# Each batch of 2 clips keeps its actor busy for 1.2 s: the kill lands mid-run.
SPEC = EncoderSpec(alias="extract_plugins:SimGpuEncoder", model="1000:100", batch_size=2, seq_len=0, num_frames=2)
NODE_PORTS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "metrics-export-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port")


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    """``ray start --block`` with these arguments in its own process group; workers import tests/."""
    ports = [arg for name in NODE_PORTS for arg in (f"--{name}", str(_free_port()))]
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
             *ports, *args],
            env=_clean_env(PYTHONPATH=str(TESTS), RAY_AUTH_MODE="disabled"),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _alive_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (2 CPUs, no GPU) and a second node (1 CPU, 1 GPU, resource ``node2``); this process connected.

    The head gets 2 CPUs: ``plan_resources`` gives each of the 2 encoder actors
    one CPU and decode tasks one, so 1 + 1 CPUs would leave no node a free CPU
    for decoding.
    """
    import ray

    temp = tempfile.mkdtemp(prefix="mer-2n-", dir="/tmp")  # short: Ray's unix sockets live under it
    logs = tmp_path_factory.mktemp("logs")
    port = _free_port()
    head = _ray_start(["--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
                       "--include-dashboard", "false", "--temp-dir", temp], logs / "head.log")
    node2 = None
    env = pytest.MonkeyPatch()
    try:
        deadline = time.monotonic() + 180
        while not (Path(temp) / "ray_current_cluster").is_file():
            assert head.poll() is None and time.monotonic() < deadline, (logs / "head.log").read_text()[-3000:]
            time.sleep(1)
        node2 = _ray_start(["--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--num-gpus", "1",
                            "--resources", '{"node2": 1}'], logs / "node2.log")
        env.setenv("RAY_AUTH_MODE", "disabled")  # as the nodes: no token to send
        ray.shutdown()
        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING", log_to_driver=False)
        while len(_alive_nodes(ray)) < 2:
            assert node2.poll() is None and time.monotonic() < deadline, (logs / "node2.log").read_text()[-3000:]
            time.sleep(1)
        yield head, node2
    finally:
        ray.shutdown()
        env.undo()
        for proc in (node2, head):
            if proc is not None:
                _stop_group(proc, temp)


def _raylet_of(proc: subprocess.Popen) -> psutil.Process:
    return next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "raylet")


def _runs_an_encoder(proc: subprocess.Popen) -> bool:
    """Whether a live encoder actor runs under this node (Ray titles actor processes with their class)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "EncodeActor" in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            pass
    return False


@pytest.mark.timeout(600)
def test_extraction_survives_losing_a_node(cluster, tmp_path):
    from mer.corpus.demo import make_demo_corpus
    from mer.extract.pipeline import extract_rows

    head, node2 = cluster
    manifest = make_demo_corpus(tmp_path / "demo", n_train=8, n_unlabeled=0, n_test=0, seed=3, workers=1)
    rows = _rows(manifest, N)
    seen: set[str] = set()
    killed = threading.Event()
    killed_at = []

    def kill_node2_once_both_work() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            seen.update(name for name, proc in (("head", head), ("node2", node2)) if _runs_an_encoder(proc))
            if seen == {"head", "node2"}:
                time.sleep(1.0)  # let node 2 hold some batches
                _raylet_of(node2).send_signal(signal.SIGKILL)
                killed_at.append(time.monotonic())
                killed.set()
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=kill_node2_once_both_work, daemon=True)
    watcher.start()
    failed = []
    cfg = ExtractConfig(num_actors=2, gpus_per_actor=0.0, decode_cpus=1.0, max_restarts=3)
    summary = extract_rows(rows, SPEC, str(tmp_path / "store"), cfg, on_failed=failed.extend, progress=False)
    done_at = time.monotonic()
    watcher.join(timeout=5)

    assert killed.is_set() and seen == {"head", "node2"}  # actors ran on both nodes
    assert killed_at[0] < done_at - 1  # node 2 died while the extraction still ran
    assert failed == [] and summary["failed"] == 0
    ids = open_store(tmp_path / "store").read(summary["encoder"]).ids
    assert len(ids) == N and len(set(ids)) == N
    assert set(ids) == set(rows["sample_id"])


def _rows(manifest: Path, n: int):
    """``n`` rows cycling over the corpus's clips under distinct ids (decoding stays real)."""
    import pandas as pd

    base = pd.read_csv(manifest, dtype=str, keep_default_na=False).replace("", None)
    rows = base.iloc[[i % len(base) for i in range(n)]].reset_index(drop=True)
    return rows.assign(sample_id=[f"s{i:03d}" for i in range(n)], split="unlabeled", label=None,
                       video=[str(manifest.parent / v) for v in rows["video"]])
