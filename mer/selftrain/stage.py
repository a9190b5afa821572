"""The ``selftrain`` stage: rounds of pseudo-labelling, with Ray metrics per round.

Ray lives at this edge only: the fits inside the rounds go through
``mer.train`` (Ray Train), and each round's pseudo-label count is published as
Ray gauges so the dashboard / Prometheus shows a run's progress.
"""

from __future__ import annotations

from mer.config import Job
from mer.selftrain.rounds import per_class_f1, run_rounds


class _RoundGauges:
    """``mer_selftrain_pseudo_labels`` / ``..._test_waf`` gauges tagged by run and round."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        tags = ("run_id", "round")
        self.added = Gauge("mer_selftrain_pseudo_labels", "pseudo-labels added in a self-training round", tag_keys=tags)
        self.total = Gauge("mer_selftrain_pseudo_labels_total", "pseudo-labels trained on so far", tag_keys=tags)
        self.waf = Gauge("mer_selftrain_test_waf", "test weighted F1 of a round's vote", tag_keys=tags)

    def __call__(self, record: dict) -> None:
        tags = {"run_id": record["run_id"], "round": str(record["round"])}
        self.added.set(record["added"], tags=tags)
        self.total.set(record["trained_on"] + record["added"], tags=tags)
        if record.get("test_weighted_f1") is not None:
            self.waf.set(record["test_weighted_f1"], tags=tags)


def run(job: Job, echo=print) -> dict:
    """Run or resume self-training; returns a short summary for stages.json."""
    import ray

    gauges = _RoundGauges() if ray.is_initialized() else None
    summary = run_rounds(job, echo=echo, on_round=gauges)
    rounds = summary["rounds"]
    return {
        "run_id": summary["run_id"],
        "rounds": len(rounds),
        "pseudo_labels": sum(r["added"] for r in rounds),
        "stopped": summary["stopped"],
        "test_weighted_f1": [r["test_weighted_f1"] for r in rounds],
        "final_per_class_f1": per_class_f1(summary),
        "outputs": [f"{job.run_dir}/selftrain.json", f"{job.run_dir}/predictions_test.csv"],
    }
