"""Shared fixtures: one local Ray per test module, with fake GPUs."""

import os
from pathlib import Path

import pytest

from mer.runner import ensure_ray

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ray_local():
    """Local Ray with 2 CPUs and 2 fake GPUs (``num_gpus=1`` actors get CUDA_VISIBLE_DEVICES 0 and 1).

    Workers can import ``tests/extract_plugins.py`` (test encoders); start-up
    is retried (:func:`mer.runner.ensure_ray`).
    """
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)
    ensure_ray(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
