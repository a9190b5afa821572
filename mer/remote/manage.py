"""Watch and control submitted jobs: status, logs (followed), stop, list.

Thin functions over ``JobSubmissionClient``; every call goes through
``cluster_errors`` so a dead head, a bad token or an unknown id is one line.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from mer.remote.client import ClusterError, cluster_errors, connect, quiet_ray_logs

FAILED_STATES = {"FAILED", "STOPPED"}
# The shell's or Python's words for an entrypoint that cannot start (sh, bash, python -m).
LAUNCH_FAILURES = re.compile(
    r"[^\n]*(?:\b(?:python3?|mer): (?:command )?not found|No module named '?(?:mer|torch|lancedb|ray)\b)[^\n]*"
)


@dataclass
class JobRow:
    """One line of ``mer list``."""

    submission_id: str
    status: str
    start: str
    name: str


def status(job_id: str, address: str | None = None) -> tuple[str, str]:
    """``(STATUS, message)`` of a job, e.g. ``("FAILED", "Job entrypoint command failed ...")``."""
    client, url = connect(address)
    with cluster_errors(url, job_id):
        info = client.get_job_info(job_id)
    return str(info.status), (info.message or "").strip()


def logs(job_id: str, address: str | None = None) -> str:
    """Everything the job's driver printed so far."""
    client, url = connect(address)
    with cluster_errors(url, job_id):
        return client.get_job_logs(job_id)


def follow(job_id: str, address: str | None = None, echo=None, poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; return its final status.

    Args:
        job_id: submission id.
        address: dashboard URL (``RAY_ADDRESS`` when None).
        echo: called with each log chunk (default: write to stdout).
        poll_s: status polling period once the log stream has closed.
    """
    echo = echo or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    client, url = connect(address)

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk)

    with cluster_errors(url, job_id), quiet_ray_logs():
        client.get_job_info(job_id)  # unknown id: one-line error before streaming
        asyncio.run(_tail())
        # The stream closes when the driver exits; the status may lag by a moment.
        while not (state := client.get_job_status(job_id)).is_terminal():
            time.sleep(poll_s)
        hint = launch_failure(client.get_job_logs(job_id)) if str(state) == "FAILED" else None
    if hint:
        raise ClusterError(f"{job_id} on {url}: {hint}")
    return str(state)


def launch_failure(job_logs: str) -> str | None:
    """What to do when the job's entrypoint could not start mer, or None when it did.

    A head started from an environment without mer (no ``python`` with mer's
    dependencies on PATH) fails before mer prints anything; its shell or
    Python says so in the driver's log.
    """
    match = LAUNCH_FAILURES.search(job_logs)
    if match is None:
        return None
    return (
        f"the cluster could not start mer ({match.group(0).strip()}): install mer and its dependencies "
        "on every node, or start Ray (`ray start`) from the environment that has them"
    )


def stop(job_id: str, address: str | None = None, timeout_s: float = 60.0, poll_s: float = 0.5) -> str:
    """Ask the cluster to stop the job and wait until it has; return its final status."""
    client, url = connect(address)
    with cluster_errors(url, job_id):
        client.stop_job(job_id)
        deadline = time.monotonic() + timeout_s
        while not (state := client.get_job_status(job_id)).is_terminal() and time.monotonic() < deadline:
            time.sleep(poll_s)
    return str(state)


def _iso(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def list_jobs(address: str | None = None, include_all: bool = False) -> list[JobRow]:
    """Jobs on the cluster, oldest first; only mer's (``metadata.mer_job``) unless ``include_all``."""
    client, url = connect(address)
    with cluster_errors(url):
        jobs = client.list_jobs()
    rows = []
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        name = (job.metadata or {}).get("mer_job")
        if name is None and not include_all:
            continue
        rows.append(
            JobRow(
                submission_id=job.submission_id or job.job_id or "-",
                status=str(job.status),
                start=_iso(job.start_time),
                name=name or "-",
            )
        )
    return rows


def format_table(rows: list[JobRow]) -> str:
    """Fixed-width table: SUBMISSION_ID, STATUS, START (UTC), NAME."""
    header = ("SUBMISSION_ID", "STATUS", "START (UTC)", "NAME")
    lines = [header] + [(r.submission_id, r.status, r.start, r.name) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(col.ljust(w) for col, w in zip(line, widths)).rstrip() for line in lines)
