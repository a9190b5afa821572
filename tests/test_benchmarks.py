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


@pytest.mark.timeout(1200)
def test_release_scale_one_run_at_a_thousandth(tmp_path):
    """One child of ``benchmarks/release_scale.py`` (what each of its three runs is) end to end at 1/1000 of MER2025."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "release_scale.py"), "--one", "0.001", "--seeds", "0",
                           "--no-compare", "--work", str(tmp_path)], capture_output=True, text=True, env=env, timeout=1140)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "scale_0.001.json").read_text())
    assert result["sizes"] == {"train": 60, "unlabeled": 125, "candidates": 50}
    assert list(result["stages"]) == ["write store", "train", "selftrain", "evaluate", "submission"]
    assert all(f["driver_peak_mb"] > 0 and f["tree_peak_mb"] > 0 for f in result["stages"].values())
    assert result["submission"]["rows"] == 50 and 0 <= result["submission"]["weighted_f1"] <= 1

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import release_scale

    assert "| 0.001 | submission |" in release_scale.table([result])
    assert "1.00x over mer's stages" in release_scale.ratios(result, result)
