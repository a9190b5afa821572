"""The identity of a fit: one hash of everything its weights depend on.

It names the fit cache folder (``<model>_s<seed>_<key>``) and the fit's Ray
Train runs, so a rerun of the same fit resumes or is skipped, and any change of
recipe, features (table versions) or labels trains afresh. Both the fit
(:mod:`mer.train.fit`) and the cache (:mod:`mer.train.cache`) import it; it
imports neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd

from mer.train.data import ReadPlan
from mer.train.settings import FitSettings

#: ``train`` keys that say which fits a stage makes, not how one is made.
NOT_RECIPE = ("seeds", "model", "baseline")
#: How rows are cut (2: epochs are chosen on an inner split, the scored rows only score); a change retrains.
ROWS_SCHEME = 2


def digest(obj) -> str:
    """Stable sha1 of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def non_default(obj) -> dict:
    """A dataclass's fields that differ from their defaults: a new knob left at its default changes no hash."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value != default:
            out[f.name] = value
    return out


def fingerprint(fit: FitSettings) -> dict:
    """What a fit depends on besides the model name, seed and extra labels.

    The recipe alone: ``execution`` (workers, GPUs, budgets, checkpoint cadence)
    changes how a fit runs, not its weights (a resumed fit ends with the same
    weights), so changing it reuses the cache. Settings at their defaults are
    left out, so adding a knob keeps every cached fit.
    """
    train = non_default(fit.train)
    for key in NOT_RECIPE:
        train.pop(key, None)
    return {
        "train": train,
        "encoders": {r: non_default(s) for r, s in sorted(fit.encoders.items())},
        "labels": list(fit.labels),
        "manifest": str(fit.manifest),
        "store": str(fit.store),
    }


def labels_digest(extra: pd.DataFrame | None) -> str:
    """Content hash of pseudo-labels ``sample_id,label`` (order-free; "" when none).

    Sorted and joined by numpy/pandas string kernels: a pool of 125,000 labels
    hashes in a fraction of a second, with no per-row Python.
    """
    if extra is None or extra.empty:
        return ""
    pairs = (extra["sample_id"].astype(str) + "\t" + extra["label"].astype(str)).to_numpy(dtype=str)
    return hashlib.sha1("\n".join(np.sort(pairs)).encode()).hexdigest()


def plan_tables(plan: ReadPlan) -> dict[str, list]:
    """Stream -> [table, pinned Lance version]: the data half of a fit's identity (augmented copies too)."""
    tables = {r: [t.table, t.table_version] for r, t in sorted(plan.roles.items())}
    tables.update({f"augment:{r}": [t.table, t.table_version] for r, t in sorted(plan.augment.items())})
    return tables


def fit_name(fit: FitSettings, plan: ReadPlan, model: str, seed: int, extra: pd.DataFrame | None = None) -> str:
    """``<model>_s<seed>_<key>``: the one hash of everything a fit's weights depend on.

    The key covers the recipe (:func:`fingerprint`), the store tables and their
    pinned Lance versions, the model, the seed and the exact extra labels.
    """
    key = digest([fingerprint(fit), plan_tables(plan), model, seed, labels_digest(extra), ROWS_SCHEME])[:12]
    return f"{model}_s{seed}_{key}"
