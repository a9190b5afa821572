"""The CLI's contract: help everywhere, one-line errors with exit code 2."""

import subprocess
import sys


def run_mer(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", "from mer.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def test_help_lists_commands():
    out = run_mer("--help")
    assert out.returncode == 0
    for command in ("demo-data", "corpus", "run"):
        assert command in out.stdout


def test_bad_job_is_one_line_error(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nmanifest: m.csv\ntrain: {epochs: lots}\n")
    out = run_mer("run", str(job))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {job}: train.epochs: expected int, got 'lots'"]
    assert "Traceback" not in out.stderr


def test_override_error_names_key(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nmanifest: m.csv\n")
    out = run_mer("run", str(job), "train.nope=1")
    assert out.returncode == 2
    assert "unknown key 'train.nope'" in out.stderr
