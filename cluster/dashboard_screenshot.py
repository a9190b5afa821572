"""A screenshot of the Ray dashboard's Jobs page with a mer job on it, taken by headless Chromium.

What a user sees after ``mer submit``: this starts a Ray head on 127.0.0.1
(its own temp dir and free ports, token auth off so the page needs no login),
writes a small demo corpus, submits the quickstart job with ``mer submit`` and
waits for it to finish, then loads ``http://127.0.0.1:<port>/#/jobs`` in
Debian's Chromium (``apt-get install chromium``) and saves the page as a PNG.
Everything it started is stopped at the end.

Run: .venv/bin/python cluster/dashboard_screenshot.py --out docs/img/ray_jobs.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORTS = ("port", "dashboard-port", "metrics-export-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
         "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/img/ray_jobs.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mer-shot-", dir="/tmp"))
    ports = {name: free_port() for name in PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--temp-dir", str(work / "ray"),
           "--disable-usage-stats", *[f"--{name}={port}" for name, port in ports.items()]]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        for _ in range(180):
            try:
                if requests.get(f"{url}/api/jobs/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        subprocess.run([str(BIN / "mer"), "demo-data", str(work / "demo"), "--n-train", "12", "--n-unlabeled", "12",
                        "--n-test", "12"], check=True, env=env)
        subprocess.run([str(BIN / "mer"), "submit", "jobs/quickstart.yaml", f"manifest={work / 'demo' / 'manifest.csv'}",
                        f"truth={work / 'demo' / 'unlabeled_truth.csv'}", f"store={work / 'store'}",
                        f"run_dir={work / 'run'}", "train.epochs=2", "train.seeds=[0]", "selftrain.rounds=1",
                        "--address", url, "--follow"], check=True, cwd=REPO, env=env)
        out = Path(args.out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={work / 'chromium'}", "--hide-scrollbars", "--window-size=1440,900",
                        "--virtual-time-budget=15000", f"--screenshot={out}", f"{url}/#/jobs"],
                       check=True, env=env, capture_output=True, timeout=120)
        print(f"wrote {out}")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
