"""Votes over several models' probability tables: pseudo-labels and a run's final prediction (numpy, pandas, Arrow).

The paper (arXiv 2409.05007, section on self-training) keeps a model's label on an
unlabeled clip when its probability is above 0.9 and resolves the models with a
prior-knowledge vote: for the classes the test set has far more of than the
training set (worried and sad) the HuBERT/audio model is trusted, otherwise the
majority wins. It is silent on the rest; our choices, each named here and in
``docs/paper.md``:

* **Confident vote.** A model votes for its arg-max label only where its maximum
  probability is strictly greater than ``tau``. A model's probability is the mean
  over its seeds (``average_seeds``) before the vote, so seeds are one voter.
* **prior** (``voting="prior"``). Where the audio model is confident and its label
  is a prior class, that label wins. ``prior_mode="override"`` (default) lets it
  win even against a confident majority for another class (the paper's phrase
  "the audio model is trusted" read literally); ``prior_mode="unless_majority"``
  lets a strict majority (> half) of the confident models overrule it. A prior
  class proposed by the majority but not by the audio model is kept (the prior
  adds trust to the audio model; it does not veto the others). Everything else
  falls to the majority rule.
* **majority** (``voting="majority"``). The label with most confident votes wins.
  A tie is broken by the mean probability of the tied labels over *all* models
  (confident or not), then by the label order of the job. One confident model
  alone is a majority of one.
* **soft** (``voting="soft"``). Mean probability over all models; its arg-max is
  kept where the mean is > ``tau``.
* **weights** (``weights=``, from ``selftrain.voters: cv``). A model's confident
  vote counts its weight instead of 1 and the mean probabilities are weighted
  means; a model with weight 0 does not vote. Equal weights give the rules above.
* No confident vote -> no label. ``confidence`` is the mean probability of the
  winning label over the models that voted for it (soft: over all models).
* A sample absent from a model's table gets no vote from that model.

:func:`final_vote` is the same vote used as a predictor (the test split, the
challenge candidates, ``mer predict --run``): a sample with no confident vote
takes the arg-max of the mean probability. Every operation is vectorised over
samples (a pool of 125,000 clips votes in well under a second). No Ray here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mer.config import SelftrainConfig
from mer.errors import MerError

VOTING_RULES = ("prior", "majority", "soft")
PRIOR_MODES = ("override", "unless_majority")
VOTERS = ("all", "cv")


class VotingError(MerError, ValueError):
    """Voting asked for something the tables or the config cannot give."""


def prob_columns(labels: Sequence[str]) -> list[str]:
    """``["sad", ...]`` -> ``["p_sad", ...]`` (the predictions CSV columns)."""
    return [f"p_{label}" for label in labels]


def average_seeds(tables: Sequence[pd.DataFrame], labels: Sequence[str]) -> pd.DataFrame:
    """Mean probability table of one model's seeds, aligned on ``sample_id``.

    Args:
        tables: prediction tables of the same model (one per seed).
        labels: label set; the tables need ``p_<label>`` for each.

    Returns:
        ``sample_id`` + ``p_<label>`` columns, with ``label`` the arg-max, sorted by id.
    """
    if not tables:
        raise VotingError("average_seeds: no prediction tables")
    cols = prob_columns(labels)
    stacked = pd.concat([t[["sample_id", *cols]] for t in tables], ignore_index=True)
    mean = stacked.groupby("sample_id", sort=True)[cols].mean().reset_index()
    mean.insert(1, "label", np.asarray(labels, dtype=object)[mean[cols].to_numpy().argmax(axis=1)])
    return mean


def _stack(tables: Mapping[str, pd.DataFrame], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Align every model's table on the union of sample ids -> (ids, P[K, N, C])."""
    cols = prob_columns(labels)
    for name, table in tables.items():
        missing = [c for c in ["sample_id", *cols] if c not in table.columns]
        if missing:
            raise VotingError(f"model '{name}': probability table lacks column '{missing[0]}'")
        if table["sample_id"].duplicated().any():
            raise VotingError(f"model '{name}': duplicate sample_id in probability table")
    keyed = {name: t.assign(sample_id=t["sample_id"].astype(str)).set_index("sample_id")[cols]
             for name, t in tables.items()}
    index = None
    for frame in keyed.values():
        index = frame.index if index is None else index.union(frame.index)
    ids = index.sort_values()
    probs = np.stack([frame.reindex(ids).to_numpy(float) for frame in keyed.values()])
    return np.asarray(ids, dtype=object), probs


def vote(
    tables: Mapping[str, pd.DataFrame],
    labels: Sequence[str],
    tau: float = 0.9,
    voting: str = "prior",
    prior_classes: Sequence[str] = ("worried", "sad"),
    audio_model: str | None = "unimodal",
    prior_mode: str = "override",
    keep_unlabeled: bool = False,
    weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Resolve several models' probabilities into one pseudo-label per sample.

    Args:
        tables: model name -> table with ``sample_id`` and ``p_<label>`` columns
            (one row per sample; average seeds first with ``average_seeds``).
        labels: label set, in probability-column order (also the last tie-break).
        tau: a model votes only where its max probability is > tau.
        voting: ``prior``, ``majority`` or ``soft`` (see the module docstring).
        prior_classes: labels for which the audio model's confident vote wins.
        audio_model: key of the audio model in ``tables`` (needed for ``prior``).
        prior_mode: ``override`` or ``unless_majority``.
        keep_unlabeled: keep samples without a label (``label`` None) instead of
            dropping them.
        weights: model name -> vote weight (default 1 each; 0 = no vote).

    Returns:
        DataFrame ``sample_id, label, confidence, votes, decided_by`` sorted by
        sample_id; ``votes`` lists the confident votes as ``model:label`` joined
        by commas; ``decided_by`` names the rule that gave the label (``prior``:
        the audio model's confident prior class, ``majority``, ``soft``; None
        without a label).
    """
    if voting not in VOTING_RULES:
        raise VotingError(f"voting: unknown rule '{voting}' (known: {', '.join(VOTING_RULES)})")
    if prior_mode not in PRIOR_MODES:
        raise VotingError(f"prior_mode: unknown mode '{prior_mode}' (known: {', '.join(PRIOR_MODES)})")
    if not tables:
        raise VotingError("vote: no models to vote")
    labels = list(labels)
    unknown = [c for c in prior_classes if c not in labels]
    if unknown:
        raise VotingError(f"prior_classes: '{unknown[0]}' is not a label")
    if voting == "prior" and audio_model not in tables:
        raise VotingError(f"prior voting needs the audio model '{audio_model}' among the models {list(tables)}")

    weights = dict(weights or {})
    tables = {name: t for name, t in tables.items() if weights.get(name, 1.0) > 0}
    if not tables:
        raise VotingError("vote: every model has weight 0")
    if voting == "prior" and audio_model not in tables:
        raise VotingError(f"prior voting: the audio model '{audio_model}' has weight 0")
    names = list(tables)
    w = np.array([float(weights.get(name, 1.0)) for name in names])
    label_arr = np.asarray(labels, dtype=object)
    num_classes = len(labels)
    ids, probs = _stack(tables, labels)  # (K, N, C), NaN where a model lacks a sample
    present = ~np.isnan(probs).any(axis=2)
    filled = np.where(present[..., None], probs, -np.inf)
    top = filled.argmax(axis=2)  # (K, N)
    top_p = np.take_along_axis(filled, top[..., None], axis=2)[..., 0]
    confident = present & (top_p > tau)
    wp = np.where(present, w[:, None], 0.0)  # (K, N): a model's weight where it has the sample
    with np.errstate(invalid="ignore"):
        mean_p = np.einsum("kn,knc->nc", wp, np.nan_to_num(probs)) / wp.sum(axis=0)[:, None]
    mean_p = np.nan_to_num(mean_p, nan=0.0)

    onehot = np.eye(num_classes, dtype=int)[top] * confident[..., None]  # (K, N, C)
    counts = np.einsum("k,knc->nc", w, onehot)  # (N, C) weighted confident votes
    n_conf = confident.sum(axis=0)
    rows = np.arange(len(ids))

    if voting == "soft":
        winner = mean_p.argmax(axis=1)
        accepted = mean_p[rows, winner] > tau
        confidence = mean_p[rows, winner]
        decided_by = np.full(len(ids), "soft", object)
    else:
        # Most (weighted) votes first; among tied labels the higher mean probability.
        tied = np.isclose(counts, counts.max(axis=1, keepdims=True)) & (counts > 0)
        winner = np.where(tied, mean_p, -1.0).argmax(axis=1)
        accepted = n_conf > 0
        decided_by = np.full(len(ids), "majority", object)
        if voting == "prior":
            a = names.index(audio_model)
            prior_idx = [labels.index(c) for c in prior_classes]
            audio_prior = confident[a] & np.isin(top[a], prior_idx)
            if prior_mode == "unless_majority":
                others = counts.copy()
                others[rows, top[a]] = 0
                audio_prior &= ~(others.max(axis=1) * 2 > counts.sum(axis=1))
            winner = np.where(audio_prior, top[a], winner)
            decided_by[audio_prior] = "prior"
        voters = onehot[:, rows, winner].astype(bool)  # (K, N): confident and voted for the winner
        with np.errstate(invalid="ignore"):
            confidence = np.where(voters, probs[:, rows, winner], 0.0).sum(axis=0) / np.maximum(voters.sum(axis=0), 1)

    out = pd.DataFrame(
        {
            "sample_id": ids,
            "label": np.where(accepted, label_arr[winner] if len(ids) else label_arr[:0], None),
            "confidence": np.where(accepted, confidence, np.nan).astype(float),
            "votes": _votes_strings(names, label_arr, top, confident),
            "decided_by": np.where(accepted, decided_by, None),
        }
    )
    if not keep_unlabeled:
        out = out[accepted].reset_index(drop=True)
    return out


def _votes_strings(names: Sequence[str], label_arr: np.ndarray, top: np.ndarray, confident: np.ndarray) -> np.ndarray:
    """``agt:sad,attention:sad`` per sample from the confident votes (Arrow string kernels, no per-sample loop)."""
    n = top.shape[1] if top.ndim == 2 else 0
    if not n:
        return np.array([], dtype=object)
    parts = []
    for k, name in enumerate(names):
        tags = pa.array(np.asarray([f"{name}:{lab}" for lab in label_arr], dtype=object))  # one per label, not per sample
        parts.append(pc.if_else(pa.array(confident[k]), pc.take(tags, pa.array(top[k])), pa.scalar(None, pa.string())))
    # null_handling="skip" drops rows whose parts are all null (pyarrow 26): join with "" and squeeze the commas
    joined = pc.binary_join_element_wise(*parts, ",", null_handling="replace", null_replacement="")
    joined = pc.utf8_trim(pc.replace_substring_regex(joined, ",{2,}", ","), ",")
    return joined.to_numpy(zero_copy_only=False).astype(object)


def rule_kwargs(st: SelftrainConfig, weights: Mapping[str, float] | None = None) -> dict:
    """The voting settings of ``st`` as keyword arguments of :func:`vote`.

    With ``weights`` (``selftrain.voters: cv``) a prior vote whose audio model
    has weight 0 becomes a majority vote.
    """
    voting = st.voting
    if voting == "prior" and weights is not None and weights.get(st.audio_model, 0.0) <= 0:
        voting = "majority"
    return {
        "voting": voting,
        "prior_classes": st.prior_classes,
        "audio_model": st.audio_model if voting == "prior" else None,
        "prior_mode": st.prior_mode,
        "weights": weights,
    }


def voter_weights(st: SelftrainConfig, cv: Mapping[str, float]) -> dict[str, float] | None:
    """Vote weights from the models' CV scores (``selftrain.voters: cv``), else None (equal votes).

    A model scoring more than ``selftrain.cv_margin`` below the best gets 0
    (no vote); the others vote with their score.
    """
    if st.voters != "cv" or not cv:
        return None
    best = max(cv.values())
    return {m: (score if score >= best - st.cv_margin else 0.0) for m, score in cv.items()}


def models_cv(scores: Mapping[tuple[str, int], float | None], seeds: Sequence[int]) -> dict[str, float]:
    """Model -> mean over ``seeds`` of its fits' cross-validated weighted F1 (``(model, seed) -> score``)."""
    per_model: dict[str, list[float]] = {}
    for (model, seed), score in scores.items():
        if seed in seeds and score is not None:
            per_model.setdefault(model, []).append(score)
    return {m: float(np.mean(v)) for m, v in per_model.items()}


def final_vote(tables: Mapping[str, pd.DataFrame], labels: Sequence[str], st: SelftrainConfig,
               weights: Mapping[str, float] | None = None, paths: bool = False) -> pd.DataFrame:
    """The vote as a predictor: every sample gets a label (the vote, else the mean-probability arg-max).

    Threshold ``st.test_threshold`` (unset = ``st.threshold``: the same vote as
    the pseudo-labels'). Probabilities are the (weighted) mean over the voting models.

    Returns:
        ``sample_id,label,p_<label>...`` sorted by id (the predictions CSV format);
        with ``paths``, also ``path`` (``vote:<decided_by>``, or ``vote:mean`` where
        no model was confident) and ``votes`` (what ``mer serve`` answers with).
    """
    cols = prob_columns(labels)
    tau = st.threshold if st.test_threshold is None else st.test_threshold
    voted = vote(tables, labels, tau=tau, keep_unlabeled=True, **rule_kwargs(st, weights))
    voting_tables = [t for m, t in tables.items() if weights is None or weights.get(m, 0.0) > 0]
    mean = average_seeds(voting_tables, labels)
    voted = voted.rename(columns={"label": "voted"})
    out = mean.merge(voted[["sample_id", "voted", "decided_by", "votes"]], on="sample_id", how="left")
    out["label"] = out["voted"].where(out["voted"].notna(), out["label"])
    if not paths:
        return out[["sample_id", "label", *cols]]
    out["path"] = "vote:" + out["decided_by"].fillna("mean").astype(str)
    return out[["sample_id", "label", *cols, "path", "votes"]]


def check_rule(st: SelftrainConfig, labels: Sequence[str]) -> None:
    """VotingError naming the ``selftrain`` key whose value no vote knows (checked before any work)."""
    if st.voting not in VOTING_RULES:
        raise VotingError(f"selftrain.voting: unknown rule '{st.voting}' (known: {', '.join(VOTING_RULES)})")
    if st.prior_mode not in PRIOR_MODES:
        raise VotingError(f"selftrain.prior_mode: unknown mode '{st.prior_mode}' (known: {', '.join(PRIOR_MODES)})")
    if st.voters not in VOTERS:
        raise VotingError(f"selftrain.voters: expected {' or '.join(VOTERS)}, got {st.voters!r}")
    unknown = [c for c in st.prior_classes if c not in labels]
    if unknown:
        raise VotingError(f"selftrain.prior_classes: '{unknown[0]}' is not one of the labels ({', '.join(labels)})")
    if st.voting == "prior" and st.audio_model not in st.models:
        raise VotingError(f"selftrain.audio_model: '{st.audio_model}' is not in selftrain.models {st.models}")
