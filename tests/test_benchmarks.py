"""The prepared GPU script cannot rot: its ``--tiny`` mode runs the same code on the CPU (tiny configs, 8 clips)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_gpu_script_tiny_mode_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=840)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["device"] == "cpu"
    for name in ("hubert", "clip", "baichuan"):
        figures = result["encoders"][name]
        assert figures["clips"] == 8 and figures["mer_clips_per_s"] > 0 and figures["mertools_loop_clips_per_s"] > 0
        assert figures["bottleneck"] in ("decode CPUs", "encoder (GPU)")
    assert result["whisper"]["clips"] == 8 and result["whisper"]["clips_per_s"] > 0
    assert result["agt_training"]["samples_per_s"] > 0
