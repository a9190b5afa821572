"""The stage registry: every stage name, the function that runs it, and whether it needs Ray.

A stage is a function ``run(job, echo) -> dict``, with an optional
``check(job)`` that names a setting it cannot use (:func:`mer.runner.check_job`
runs the checks of every stage of a job before the first stage starts, so a
misspelt model, vote or encoder fails in one line before any work). A stage reads its inputs from the
store or ``run_dir``, writes its outputs there, reports progress through
``echo`` and returns a JSON-able summary; a summary's ``job_updates``
(dotted key -> value) change the job for the stages after it (fine-tuning
names its exported model this way), so no stage edits the job. Only the runner
(:func:`mer.runner.run_job`) starts or joins Ray, once, when a stage of the
job needs it; no stage calls back into the runner. Importing this module
imports no stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: ``target`` is ``module:function``; ``needs_ray`` makes the runner start Ray first.

    ``check`` (``module:function``, optional) raises a one-line error for a
    setting the stage cannot use.
    """

    name: str
    target: str
    needs_ray: bool
    check: str = ""

    def function(self):
        """The stage function (imported on first use: stages import torch, Ray, lancedb)."""
        return load(self.target)


def load(target: str):
    """The function a ``module:function`` target names."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("validate", "mer.corpus.stage:run", needs_ray=False),
    Stage("asr", "mer.extract.transcribe:run", needs_ray=True, check="mer.extract.transcribe:check"),
    Stage("extract", "mer.extract.stage:run", needs_ray=True, check="mer.extract.stage:check"),
    Stage("finetune", "mer.finetune.stage:run", needs_ray=True, check="mer.finetune.stage:check"),
    Stage("train", "mer.train.stage:run", needs_ray=True, check="mer.train.stage:check"),
    Stage("selftrain", "mer.selftrain.stage:run", needs_ray=True, check="mer.selftrain.stage:check"),
    Stage("ablation", "mer.experiments.ablation:run", needs_ray=True, check="mer.experiments.ablation:check"),
    Stage("robustness", "mer.experiments.robustness:run", needs_ray=True, check="mer.experiments.robustness:check"),
    Stage("tune", "mer.tune.search:run", needs_ray=True, check="mer.tune.search:check"),
    Stage("evaluate", "mer.report.stage:evaluate", needs_ray=False),
    Stage("report", "mer.report.stage:report", needs_ray=False),
)}
