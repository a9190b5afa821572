"""Whether a Ray Train run can ever start: its workers' resources against the live nodes.

Ray Train waits for a worker group's resources without end, retrying the
start every minute, so ``use_gpu`` on a cluster without GPUs, more workers than
GPUs, or a custom resource no node was started with would hang a stage. The
train stage and fine-tuning check first and say in one line what is missing.
"""

from __future__ import annotations

from mer.errors import MerError


def worker_resources(scaling) -> dict[str, float]:
    """What one worker of a ``ray.train.ScalingConfig`` asks Ray for (Ray's defaults filled in)."""
    return dict(scaling._resources_per_worker_not_none)


def check_placeable(scaling, settings: str) -> None:
    """MerError when the live nodes can never hold ``scaling.num_workers`` workers at once.

    Counts, per node, how many workers fit in its total resources (not what is
    free now: other fits may hold them for a while). Without a running Ray
    there is nothing to check: the trainer starts a local one with this
    machine's resources.

    Args:
        scaling: the run's ``ScalingConfig``.
        settings: the job keys that set the resources, named in the error.
    """
    import ray

    if not ray.is_initialized():
        return
    need = {k: v for k, v in worker_resources(scaling).items() if v > 0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fit = sum(min((int(node.get(k, 0) // v) for k, v in need.items()), default=scaling.num_workers)
              for node in nodes)
    if fit < scaling.num_workers:
        have = "; ".join(_listed({k: v for k, v in sorted(n.items()) if not k.startswith("node:")
                                  and k not in ("memory", "object_store_memory")}) for n in nodes)
        raise MerError(f"{scaling.num_workers} Ray Train worker(s) needing {_listed(need)} each cannot be placed: "
                       f"the live nodes hold {fit} (nodes have: {have or 'none'}); set {settings} to what the "
                       "cluster has")


def _listed(resources: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:g}" for k, v in resources.items())
