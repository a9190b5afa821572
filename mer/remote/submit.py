"""Package a job for the cluster and submit it: ``mer submit JOB.yaml``.

What goes to the cluster:

- the working directory (default: where ``mer submit`` runs) as Ray's
  ``working_dir``, so the job YAMLs and, in a mer checkout, the ``mer/`` code
  travel with the job; Ray puts that folder first on ``PYTHONPATH``, so the
  code you edited is the code that runs. Stores, run folders, virtualenvs,
  git data, corpora and media are excluded (Ray also honours ``.gitignore``).
- when the working directory holds no ``mer/`` package (a project folder with
  only job files), the local ``mer`` package as a ``py_modules`` entry, so the
  cluster runs the same mer version as this client.
- the entrypoint ``python -m mer.cli run <job> key=value ...``: it needs no
  ``mer`` script on the head's PATH (a head started from a virtualenv that is
  not activated has none), only a ``python`` whose environment holds mer's
  dependencies (torch, lancedb, PyAV...) on every node (``cluster/ray-aws.yaml``
  and the KubeRay manifests install them). ``mer submit --follow`` turns
  the failure of a head without them into one line saying what to do
  (:func:`mer.remote.manage.launch_failure`).
- the job's ``store_options`` as ``MER_STORE_OPTIONS`` in the runtime_env's
  ``env_vars``, so the driver and every worker open the store with them
  (:mod:`mer.store.options`).

Paths in the job (manifest, truth, store, run_dir, local model folders) are
relative to where you run mer; on the cluster the job runs inside Ray's copy
of the working dir, which is deleted later. ``mer submit`` therefore sends
them as absolute paths (resolved against the working directory) (inputs only when they exist here): right for a
single-machine head and for a shared filesystem mounted at the same path; on
any other cluster set them to cluster paths or ``s3://`` URIs.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mer.config import Job, absolute_paths, is_uri, load_job
from mer.errors import MerError
from mer.runner import check_job
from mer.store.options import ENV_VAR as STORE_OPTIONS_VAR

# Never shipped: outputs, environments, data. Patterns are gitignore-style.
EXCLUDES = [
    ".git/", ".venv/", "venv/", "__pycache__/", "*.egg-info/", ".pytest_cache/", "build/",
    "mer_store/", "runs/", "demo_corpus/", "*.lance/", "*.lance",
    "*.mp4", "*.avi", "*.mkv", "*.webm", "*.mov", "*.wav", "*.flac", "*.mp3",
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# A head answers HTTP 500 with this for a few seconds after `ray start --head`.
TRANSIENT_ANSWERS = ("No available agent",)
SUBMIT_RETRY_S = 30.0
# The module, not the `mer` script: a head's PATH may lack the script (see the module docstring).
ENTRYPOINT = "python -m mer.cli run "


@dataclass
class Submission:
    """Everything sent to the Jobs API for one ``mer submit``.

    Attributes:
        job: the job as validated locally (overrides applied).
        submission_id: ``mer-<name>-<8 hex>``, shown by ``ray job list`` and the dashboard.
        entrypoint: shell command the cluster runs.
        runtime_env: Ray runtime environment (working_dir, excludes, py_modules, env_vars).
        metadata: ``{"mer_job": name}``; ``mer list`` keeps jobs that carry it.
        path_overrides: ``key=value`` pairs mer added to make paths absolute.
    """

    job: Job
    submission_id: str
    entrypoint: str
    runtime_env: dict
    metadata: dict
    path_overrides: list[str] = field(default_factory=list)


def submission_id(name: str) -> str:
    """``mer-<name>-<8 hex>``: readable in ``ray job list``, unique per submit."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "job"
    return f"mer-{slug}-{uuid.uuid4().hex[:8]}"


def runtime_env(working_dir: Path, extra_excludes: list[str] = (), store_options: dict | None = None) -> dict:
    """Ray runtime_env shipping ``working_dir`` (and mer itself when it is not inside).

    Args:
        working_dir: folder uploaded as the job's working directory.
        extra_excludes: more gitignore-style patterns, relative to ``working_dir``.
        store_options: the job's ``store_options``, set as ``MER_STORE_OPTIONS``
            on the driver and every worker.
    """
    import mer

    env = {
        "working_dir": str(working_dir),
        "excludes": EXCLUDES + [p for p in extra_excludes if p not in EXCLUDES],
        # Logs reach `mer logs --follow` line by line instead of in 8 KiB blocks.
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }
    if store_options:
        env["env_vars"][STORE_OPTIONS_VAR] = json.dumps(dict(store_options), sort_keys=True)
    if not (working_dir / "mer" / "__init__.py").is_file():
        env["py_modules"] = [str(Path(mer.__file__).resolve().parent)]
    return env


def _data_excludes(job: Job, working_dir: Path) -> list[str]:
    """Folders the job reads or writes that lie inside ``working_dir``."""
    out = []
    corpus_dir = None if is_uri(job.manifest) else str(Path(job.manifest).parent)
    for value in (job.store, job.run_dir, corpus_dir):
        if not value or is_uri(value) or value == ".":
            continue
        path = (working_dir / value).resolve()
        if path != working_dir and path.is_relative_to(working_dir):
            out.append("/" + path.relative_to(working_dir).as_posix() + "/")
    return out


def build_submission(
    job_file: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    working_dir: str | Path = ".",
) -> Submission:
    """Validate the job locally and build what ``submit_job`` receives.

    Raises:
        ConfigError: the job file or an override is invalid (nothing is sent).
        MerError: the job file lies outside ``working_dir``.
    """
    job = load_job(job_file, overrides)
    check_job(job)  # a misspelt model, vote or encoder fails here, before anything is sent
    root = Path(working_dir).resolve()
    job_path = Path(job_file).resolve()
    if not job_path.is_relative_to(root):
        raise MerError(
            f"{job_file} is outside the working dir {root}: run mer submit from the project "
            "folder or pass --working-dir"
        )
    extra = [f"{key}={value if isinstance(value, str) else json.dumps(value)}"
             for key, value in absolute_paths(job, root).items()]
    args = [job_path.relative_to(root).as_posix(), *overrides, *extra]
    return Submission(
        job=load_job(job_file, [*overrides, *extra]),
        submission_id=submission_id(job.name),
        entrypoint=ENTRYPOINT + shlex.join(args),
        runtime_env=runtime_env(root, _data_excludes(job, root), job.store_options),
        metadata={"mer_job": job.name},
        path_overrides=extra,
    )


def is_local_address(url: str) -> bool:
    """True when the dashboard URL points at this machine."""
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


def submit(sub: Submission, address: str | None = None, entrypoint_num_cpus: float | None = None) -> str:
    """Send a built submission to the cluster; return its submission id.

    A head that is still starting ("No available agent") is asked again for
    up to ``SUBMIT_RETRY_S`` seconds (:func:`retry_transient`).

    Raises:
        ClusterError: no address, unreachable head, bad token, or the head refused the job.
    """
    from mer.remote.client import cluster_errors, connect, quiet_ray_logs

    client, url = connect(address)
    with cluster_errors(url), quiet_ray_logs():
        return retry_transient(
            lambda: client.submit_job(
                entrypoint=sub.entrypoint,
                submission_id=sub.submission_id,
                runtime_env=sub.runtime_env,
                metadata=sub.metadata,
                entrypoint_num_cpus=entrypoint_num_cpus,
            ),
            url,
        )


def retry_transient(call, url: str, budget_s: float = SUBMIT_RETRY_S, first_wait_s: float = 0.5,
                    sleep=time.sleep, clock=time.monotonic):
    """``call()``, asked again with doubling waits while the head gives a transient answer.

    Args:
        call: the request; a ``RuntimeError`` naming one of ``TRANSIENT_ANSWERS`` is retried.
        url: the dashboard URL, named in the error.
        budget_s: give up once this many seconds have passed.
        first_wait_s: first wait; each next one doubles (at most 8 s).
        sleep, clock: injectable for tests.

    Raises:
        ClusterError: still transient after ``budget_s`` (one line saying what to do).
        RuntimeError: any other refusal, unchanged.
    """
    from mer.remote.client import ClusterError

    deadline, wait, tries = clock() + budget_s, first_wait_s, 0
    while True:
        try:
            return call()
        except RuntimeError as exc:
            if not any(answer in str(exc) for answer in TRANSIENT_ANSWERS):
                raise
            tries += 1
            if clock() + wait > deadline:
                raise ClusterError(
                    f"{url}: the head has no job agent ready after {tries} tries in {budget_s:.0f} s "
                    "(it may still be starting): check `ray status` on the head, then submit again"
                ) from None
            sleep(wait)
            wait = min(wait * 2, 8.0)
