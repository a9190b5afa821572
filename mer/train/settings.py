"""What a fit reads and how it runs: the settings a stage hands down instead of the whole job.

A stage unpacks its job into :class:`FitSettings` (``mer.train.stage.fit_settings``);
everything below the stages (fits, the fit cache, reads, self-training rounds)
takes these fields, so a function's signature says which settings it depends on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mer.config import EncoderSpec, ExecutionConfig, TrainConfig
from mer.runfolder import RunFolder
from mer.train.data import MultiModalData, ReadPlan, plan_read, read_plan


@dataclass(frozen=True)
class FitSettings:
    """Everything a fit of one model and seed depends on, and where it runs.

    Attributes:
        name: the job's name (fits are logged in the store's ``runs`` table as
            ``<name>/<model>/seed<s>``).
        store: LanceDB URI of the features.
        manifest: the manifest the features came from (part of a fit's identity).
        labels: the label set, in probability-column order.
        encoders: stream -> encoder spec (one stream per role, or several:
            ``mer.config.Job.streams``).
        train: the recipe.
        execution: how fits run (workers, GPUs, memory budget); never part of a fit's identity.
        run_dir: the run folder (Ray Train's storage is ``run_dir/ray_train``).
        fits_dir: the fit cache (default ``run_dir/checkpoints``; the ablation
            variants share their parent's).
        config_yaml: the resolved job, logged with every fit.
    """

    name: str
    store: str
    manifest: str
    labels: list[str]
    encoders: dict[str, EncoderSpec]
    train: TrainConfig
    execution: ExecutionConfig
    run_dir: str
    fits_dir: str
    config_yaml: str = ""

    def replace(self, **changes) -> FitSettings:
        """A copy with fields replaced; ``train``/``execution`` accept a dict of their own fields."""
        for key in ("train", "execution"):
            if isinstance(changes.get(key), dict):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        return dataclasses.replace(self, **changes)

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage for the fits' runs (``run_dir/ray_train``)."""
        return RunFolder(self.run_dir).ray_train.resolve()

    def plan(self, streaming: bool | None = None) -> ReadPlan:
        """The streams' tables at their newest versions, pinned (:func:`mer.train.data.plan_read`)."""
        return plan_read(self.store, self.encoders, self.train, self.execution.memory_budget_gb, streaming,
                         self.manifest)

    def load(self, splits: str | list[str] | None = None, streaming: bool | None = None) -> MultiModalData:
        """The streams' features joined on sample_id (all rows, or ``splits``)."""
        return read_plan(self.plan(streaming), splits)
