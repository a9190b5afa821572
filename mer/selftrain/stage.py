"""The ``selftrain`` stage: rounds of pseudo-labelling, with Ray metrics per round.

Ray lives at this edge only: the fits inside the rounds go through
``mer.train`` (Ray Train), and each round's pseudo-label count is published as
Ray gauges so the dashboard / Prometheus shows a run's progress.
"""

from __future__ import annotations

from mer.config import Job
from mer.corpus.labels import hidden_truth, split_labels
from mer.metrics import per_class_f1
from mer.runfolder import SELFTRAIN, RunFolder
from mer.selftrain.rounds import Truth, run_rounds
from mer.train.stage import fit_settings


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


def check(job: Job) -> None:
    """The vote's and the voters' names, checked before any stage runs."""
    from mer.config import ConfigError
    from mer.models import check_model
    from mer.voting import check_rule

    st = job.selftrain
    check_rule(st, job.labels)
    for model in st.models:
        check_model(model, job.streams(), "selftrain.models", job.train)
    if st.voting == "prior" and st.audio_model == "unimodal" and job.train.unimodal_role != "audio":
        raise ConfigError(f"selftrain: prior voting trusts the audio model, but train.unimodal_role is "
                          f"'{job.train.unimodal_role}'")


def truth_of(job: Job) -> Truth:
    """The labels a job's rounds are scored against (never trained on)."""
    test, _ = split_labels(job.manifest, job.store, job.streams(), "test")
    return Truth(test=test, hidden=hidden_truth(job.truth), hidden_source=str(job.truth))


def run(job: Job, echo=print) -> dict:
    """Run or resume self-training; returns a short summary for stages.json."""
    import ray

    gauges = _RoundGauges() if ray.is_initialized() else None
    run_dir = RunFolder(job.run_dir)
    summary = run_rounds(fit_settings(job), job.selftrain, run_dir, truth_of(job), echo=echo, on_round=gauges)
    rounds = summary["rounds"]
    return {
        "run_id": summary["run_id"],
        "rounds": len(rounds),
        "pseudo_labels": sum(r["added"] for r in rounds),
        "stopped": summary["stopped"],
        "test_weighted_f1": [r["test_weighted_f1"] for r in rounds],
        "final_per_class_f1": per_class_f1(summary.get("final")),
        "outputs": [str(run_dir / SELFTRAIN), str(run_dir.predictions("test"))],
    }
