"""Pseudo-label voting rules on constructed probability tables."""

import numpy as np
import pandas as pd
import pytest

from mer.voting import VotingError, average_seeds, vote

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def table(rows: dict[str, tuple[str, float]]) -> pd.DataFrame:
    """sample_id -> (top label, its probability); the rest spread evenly."""
    out = []
    for sid, (label, p) in rows.items():
        probs = dict.fromkeys(LABELS, (1.0 - p) / (len(LABELS) - 1))
        probs[label] = p
        out.append({"sample_id": sid, **{f"p_{k}": v for k, v in probs.items()}})
    return pd.DataFrame(out)


def by_id(df: pd.DataFrame) -> dict:
    return dict(zip(df["sample_id"], df["label"]))


def test_prior_class_goes_to_confident_audio_model_against_majority():
    tables = {
        "agt": table({"a": ("happy", 0.95), "b": ("happy", 0.95)}),
        "attention": table({"a": ("happy", 0.97), "b": ("happy", 0.97)}),
        "unimodal": table({"a": ("sad", 0.92), "b": ("angry", 0.99)}),
    }
    out = vote(tables, LABELS, tau=0.9, voting="prior")
    # a: audio says a prior class -> it wins; b: audio says a non-prior class -> majority
    assert by_id(out) == {"a": "sad", "b": "happy"}
    row = out.set_index("sample_id").loc["a"]
    assert row["votes"] == "agt:happy,attention:happy,unimodal:sad"
    assert row["confidence"] == pytest.approx(0.92)
    assert out.set_index("sample_id").loc["b", "confidence"] == pytest.approx(0.96)
    assert out["decided_by"].tolist() == ["prior", "majority"]  # the rule that gave each label


def test_prior_mode_unless_majority_lets_a_strict_majority_win():
    tables = {
        "agt": table({"a": ("happy", 0.95), "b": ("happy", 0.95)}),
        "attention": table({"a": ("happy", 0.97), "b": ("neutral", 0.5)}),
        "unimodal": table({"a": ("worried", 0.92), "b": ("worried", 0.92)}),
    }
    out = vote(tables, LABELS, tau=0.9, voting="prior", prior_mode="unless_majority")
    # a: 2 of 3 confident say happy (strict majority); b: 1 vs 1 -> the audio model's prior vote
    assert by_id(out) == {"a": "happy", "b": "worried"}


def test_prior_needs_the_audio_model_to_be_confident():
    tables = {
        "agt": table({"a": ("happy", 0.95)}),
        "attention": table({"a": ("neutral", 0.5)}),
        "unimodal": table({"a": ("sad", 0.85)}),
    }
    assert by_id(vote(tables, LABELS, tau=0.9, voting="prior")) == {"a": "happy"}


def test_majority_ignores_the_prior_and_threshold_is_strict():
    tables = {
        "agt": table({"a": ("happy", 0.95), "b": ("angry", 0.9)}),
        "attention": table({"a": ("happy", 0.91), "b": ("angry", 0.9)}),
        "unimodal": table({"a": ("sad", 0.99), "b": ("angry", 0.89)}),
    }
    out = vote(tables, LABELS, tau=0.9, voting="majority")
    # b: nobody is strictly above 0.9 -> no label
    assert by_id(out) == {"a": "happy"}
    assert out.loc[0, "votes"] == "agt:happy,attention:happy,unimodal:sad"
    assert by_id(vote(tables, LABELS, tau=0.85, voting="majority")) == {"a": "happy", "b": "angry"}


def test_tie_broken_by_mean_probability_over_all_models_then_label_order():
    tables = {
        "agt": table({"a": ("happy", 0.95), "b": ("happy", 0.95)}),
        "attention": table({"a": ("angry", 0.96), "b": ("angry", 0.95)}),
        # not confident, but its probabilities lean to happy on a
        "unimodal": table({"a": ("happy", 0.6), "b": ("neutral", 0.5)}),
    }
    out = vote(tables, LABELS, tau=0.9, voting="majority")
    # b: 1 vs 1 with equal mean probability -> first in label order (angry before happy)
    assert by_id(out) == {"a": "happy", "b": "angry"}
    assert out.set_index("sample_id").loc["a", "confidence"] == pytest.approx(0.95)


def test_no_confident_vote_means_no_label_and_keep_unlabeled():
    tables = {"agt": table({"a": ("happy", 0.5)}), "unimodal": table({"a": ("sad", 0.4)})}
    assert vote(tables, LABELS, tau=0.9).empty
    kept = vote(tables, LABELS, tau=0.9, keep_unlabeled=True)
    assert kept["label"].tolist() == [None] and np.isnan(kept.loc[0, "confidence"]) and kept.loc[0, "votes"] == ""


def test_soft_voting_uses_mean_probability():
    tables = {
        "agt": table({"a": ("happy", 0.99), "b": ("happy", 0.99)}),
        "attention": table({"a": ("happy", 0.95), "b": ("angry", 0.99)}),
    }
    out = vote(tables, LABELS, tau=0.9, voting="soft", audio_model=None)
    assert by_id(out) == {"a": "happy"}
    assert out.loc[0, "confidence"] == pytest.approx(0.97)


def test_sample_missing_from_a_model_gets_no_vote_from_it():
    tables = {
        "agt": table({"a": ("happy", 0.95), "b": ("angry", 0.95)}),
        "unimodal": table({"a": ("sad", 0.95)}),
    }
    out = vote(tables, LABELS, tau=0.9, voting="prior")
    assert by_id(out) == {"a": "sad", "b": "angry"}
    assert out.set_index("sample_id").loc["b", "votes"] == "agt:angry"


def test_average_seeds_is_one_voter():
    seeds = [table({"a": ("sad", 0.95)}), table({"a": ("sad", 0.85)})]
    mean = average_seeds(seeds, LABELS)
    assert mean.loc[0, "p_sad"] == pytest.approx(0.9) and mean.loc[0, "label"] == "sad"
    # mean 0.9 is not > 0.9
    assert vote({"unimodal": mean}, LABELS, tau=0.9).empty


def test_bad_inputs_are_one_line_errors():
    tables = {"agt": table({"a": ("happy", 0.95)})}
    with pytest.raises(VotingError, match="audio model 'unimodal'"):
        vote(tables, LABELS, voting="prior")
    with pytest.raises(VotingError, match="unknown rule"):
        vote(tables, LABELS, voting="best")
    with pytest.raises(VotingError, match="'calm' is not a label"):
        vote(tables, LABELS, voting="majority", prior_classes=["calm"])
    with pytest.raises(VotingError, match="lacks column 'p_surprise'"):
        vote({"agt": tables["agt"].drop(columns="p_surprise")}, LABELS, voting="majority")


def test_cv_voters_keep_two_confident_weak_models_from_outvoting_the_best():
    """Equal votes let two weak models win; ``selftrain.voters: cv`` drops them and follows the best model."""
    from mer.config import SelftrainConfig
    from mer.voting import rule_kwargs, voter_weights

    truth = {"a": "sad", "b": "happy", "c": "angry"}
    tables = {
        "agt": table({k: (v, 0.95) for k, v in truth.items()}),
        "attention": table({k: ("neutral", 0.97) for k in truth}),
        "unimodal": table({k: ("neutral", 0.96) for k in truth}),
    }
    st = SelftrainConfig(voters="cv", cv_margin=0.05)
    weights = voter_weights(st, {"agt": 0.85, "attention": 0.62, "unimodal": 0.70})
    assert weights == {"agt": 0.85, "attention": 0.0, "unimodal": 0.0}
    kwargs = rule_kwargs(st, weights)
    assert kwargs["voting"] == "majority"  # the audio model lost its vote: the prior rule cannot apply
    assert by_id(vote(tables, LABELS, tau=0.9, **kwargs)) == truth
    assert set(by_id(vote(tables, LABELS, tau=0.9, voting="majority")).values()) == {"neutral"}
    # within the margin every model votes, weighted: 0.80 + 0.78 outweighs 0.85
    close = voter_weights(st, {"agt": 0.85, "attention": 0.80, "unimodal": 0.82})
    assert set(by_id(vote(tables, LABELS, tau=0.9, **rule_kwargs(st, close))).values()) == {"neutral"}
    assert voter_weights(SelftrainConfig(), {"agt": 0.85, "attention": 0.62}) is None


def test_weighted_soft_vote_is_the_weighted_mean():
    tables = {"a": table({"x": ("sad", 0.9)}), "b": table({"x": ("happy", 0.6)})}
    out = vote(tables, LABELS, tau=0.5, voting="soft", weights={"a": 3.0, "b": 1.0}, keep_unlabeled=True)
    assert out.loc[0, "label"] == "sad" and out.loc[0, "confidence"] == pytest.approx((3 * 0.9 + 0.08) / 4)


def _reference_votes(tables, tau):
    """The per-sample loop the vectorised vote replaced: ``model:label`` of every confident model, comma-joined."""
    cols = [f"p_{c}" for c in LABELS]
    ids = sorted(set().union(*(t["sample_id"] for t in tables.values())))
    rows = {name: t.set_index("sample_id")[cols].reindex(ids).to_numpy(float) for name, t in tables.items()}
    out = {}
    for i, sid in enumerate(ids):
        parts = []
        for name, probs in rows.items():
            row = probs[i]
            if not np.isnan(row).any() and row.max() > tau:
                parts.append(f"{name}:{LABELS[int(row.argmax())]}")
        out[sid] = ",".join(parts)
    return out


@pytest.mark.parametrize("voting", ["prior", "majority", "soft"])
def test_vectorised_vote_equals_the_per_sample_loop_on_thousands_of_rows(voting):
    """A pool of 3,000 clips: the Arrow/numpy vote gives the labels, votes and confidences a per-sample loop gives."""
    rng = np.random.default_rng(7)
    ids = np.array([f"s{i:05d}" for i in range(3000)])
    tables = {}
    for k, name in enumerate(("agt", "attention", "unimodal")):
        keep = rng.random(len(ids)) > 0.05 * k  # some samples missing from some models
        probs = rng.dirichlet(np.full(6, 0.15), size=keep.sum())
        tables[name] = pd.DataFrame(probs, columns=[f"p_{c}" for c in LABELS]).assign(sample_id=ids[keep])
    out = vote(tables, LABELS, tau=0.9, voting=voting, keep_unlabeled=True)
    reference = _reference_votes(tables, 0.9)
    assert out["votes"].tolist() == [reference[s] for s in out["sample_id"]]
    for _, row in out[out["label"].notna()].head(500).iterrows():
        confident = [p.split(":")[1] for p in reference[row["sample_id"]].split(",") if p]
        if voting == "majority":
            top = max(confident.count(c) for c in set(confident))
            assert confident.count(row["label"]) == top
        if voting == "prior" and "unimodal:sad" in reference[row["sample_id"]].split(","):
            assert row["label"] == "sad"
    assert (out["label"].notna() == (out["votes"] != "")).all() or voting == "soft"


def test_targets_of_pseudo_labels_equal_a_per_sample_lookup():
    """The vectorised label look-up of training targets (125,000-row pools) matches a dict look-up per sample."""
    from types import SimpleNamespace

    from mer.train.learner import targets_of

    rng = np.random.default_rng(3)
    ids = np.array([f"s{i:05d}" for i in range(5000)])
    label = np.where(rng.random(5000) < 0.3, np.asarray(LABELS, object)[rng.integers(0, 6, 5000)], None)
    data = SimpleNamespace(ids=ids, label=label)
    chosen = rng.choice(5000, 1500, replace=False)
    extra = pd.DataFrame({"sample_id": ids[chosen], "label": np.asarray(LABELS)[rng.integers(0, 6, 1500)]})
    lookup = dict(zip(extra["sample_id"], extra["label"]))
    expected = [LABELS.index(lookup.get(s, lab)) if lookup.get(s, lab) is not None else -1 for s, lab in zip(ids, label)]
    assert targets_of(data, LABELS, extra).tolist() == expected
    assert targets_of(data, LABELS, None).tolist() == [LABELS.index(x) if x else -1 for x in label]
