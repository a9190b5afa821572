"""What a fine-tune reads and where it writes: the settings the finetune stage hands down instead of the job."""

from __future__ import annotations

from dataclasses import dataclass

from mer.config import EncoderSpec, FinetuneConfig


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tune reads and where it writes (the finetune stage unpacks its job into this).

    Attributes:
        cfg: the ``finetune`` section.
        spec: the encoder of ``cfg.role`` (its ``model`` is the base model), None when the job has none.
        labels: the label set (the head's classes).
        manifest: where the labeled rows and their inputs come from.
        store: where ``cfg.pseudo_labels``' accepted labels are.
        run_dir: the run folder (Ray Train's storage, the probe file, default export folders).
        max_failures: times Ray Train restarts a dead worker (``execution.max_failures``).
    """

    cfg: FinetuneConfig
    spec: EncoderSpec | None
    labels: list[str]
    manifest: str
    store: str
    run_dir: str
    max_failures: int = 1
