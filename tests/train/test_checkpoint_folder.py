"""Report checkpoints' local folders: a killed worker's leftovers are swept, a live process's are kept."""

import os
import subprocess
import sys
import tempfile

from mer.train import loop


def test_checkpoint_folder_sweeps_folders_of_dead_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loop._sweep_dead_checkpoints.cache_clear()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"mer_ckpt_{int(dead.stdout)}_abc"
    live = tmp_path / f"mer_ckpt_{os.getppid()}_def"
    other = tmp_path / "mer_ckpt_unnamed"  # not ours to judge: no pid in the name
    for folder in (left, live, other):
        folder.mkdir()
        (folder / "state.json").write_text("{}")

    made = loop.checkpoint_folder()

    assert made.parent == tmp_path and made.name.startswith(f"mer_ckpt_{os.getpid()}_")
    assert not left.exists()
    assert live.exists() and other.exists()
    loop._sweep_dead_checkpoints.cache_clear()
