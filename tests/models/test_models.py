"""Fusion models: shapes, missing-modality masks, AMF behaviour (fast, no Ray)."""

import numpy as np
import pytest
import torch

from mer.config import ConfigError, TrainConfig
from mer.models import MODELS, build_model
from mer.models.amf import AMF

DIMS = {"audio": 12, "video": 10, "text": 8}


def make_batch(n=5, seq_len=4, absent=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for role, dim in DIMS.items():
        seq_mask = torch.ones(n, seq_len, dtype=torch.bool)
        seq_mask[0, 2:] = False  # one short sample
        present = torch.ones(n, dtype=torch.bool)
        if absent and role in absent:
            present[absent[role]] = False
            seq_mask[absent[role]] = False
        batch[role] = {
            "vector": torch.randn(n, dim, generator=g) * present[:, None],
            "seq": torch.randn(n, seq_len, dim, generator=g) * seq_mask[..., None],
            "seq_mask": seq_mask,
            "present": present,
        }
    return batch


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_missing_modality(name):
    torch.manual_seed(0)
    model = build_model(name, DIMS, 6, TrainConfig(hidden=16, heads=2, depth=2)).eval()
    assert model(make_batch()).shape == (5, 6)
    # video gone for two samples, text for one, audio for one: finite logits
    absent = {"video": [1, 2], "text": [2], "audio": [3]}
    out = model(make_batch(absent=absent))
    assert out.shape == (5, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["agt", "attention", "concat"])
def test_absent_modality_values_are_ignored(name):
    """What an absent modality's arrays hold must not change the output."""
    torch.manual_seed(0)
    model = build_model(name, DIMS, 6, TrainConfig(hidden=16, heads=2)).eval()
    batch = make_batch(absent={"video": [0, 1]})
    first = model(batch)
    batch["video"]["vector"][:2] = 100.0
    batch["video"]["seq"][:2] = -50.0
    assert torch.allclose(first, model(batch), atol=1e-5)


def test_agt_amf_weights_sum_to_one_and_mask_absent():
    torch.manual_seed(0)
    model = build_model("agt", DIMS, 6, TrainConfig(hidden=16, heads=2)).eval()
    _, weights = model.model.fusion(make_batch(absent={"video": [1], "audio": [2]}))
    assert weights.shape == (5, 3)  # audio, text, video
    assert torch.allclose(weights.sum(1), torch.ones(5), atol=1e-6)
    assert weights[1, 2] == 0 and weights[2, 0] == 0


@pytest.mark.parametrize("similarity", ["cosine", "bilinear"])
def test_amf_moves_toward_the_agreeing_modality(similarity):
    amf = AMF(8, similarity)
    audio = torch.randn(4, 8)
    agree = audio + 0.1 * torch.randn(4, 8)
    disagree = -audio
    streams = torch.stack([agree, disagree], 1)
    present = torch.ones(4, 2, dtype=torch.bool)
    fused, weights = amf(streams, audio, present)
    assert torch.allclose(weights.sum(1), torch.ones(4))
    assert (weights[:, 0] > 0.9).all()
    # the fused vector points the way the audio does
    assert (torch.nn.functional.cosine_similarity(fused, audio) > 0.8).all()
    # with the agreeing stream masked, all weight goes to the other one
    _, weights = amf(streams, audio, torch.tensor([[False, True]] * 4))
    assert torch.equal(weights, torch.tensor([[0.0, 1.0]] * 4))


def test_builder_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.model"):
        build_model("nope", DIMS, 6, TrainConfig())
    with pytest.raises(ConfigError, match="audio"):
        build_model("agt", {"text": 8}, 6, TrainConfig())
    with pytest.raises(ConfigError, match="unimodal_role"):
        build_model("unimodal", {"text": 8}, 6, TrainConfig())


def test_standardizer_fits_train_statistics_and_travels_in_state_dict():
    torch.manual_seed(0)
    model = build_model("concat", {"audio": 3}, 6, TrainConfig(hidden=8))
    scale = torch.tensor([1.0, 100.0, 1e4])
    vectors = torch.randn(64, 3) * scale + torch.tensor([5.0, -3.0, 200.0])
    present = torch.ones(64, dtype=torch.bool)
    present[:4] = False  # absent rows must not enter the statistics
    vectors[:4] = 1e9
    model.fit([{"audio": {"vector": vectors[:32], "present": present[:32]}},
               {"audio": {"vector": vectors[32:], "present": present[32:]}}])
    scaled = model.scale({"audio": {"vector": vectors[4:], "present": present[4:]}})["audio"]["vector"]
    assert torch.allclose(scaled.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(scaled.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    again = build_model("concat", {"audio": 3}, 6, TrainConfig(hidden=8))
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.vector_std_audio, model.vector_std_audio)


def test_a_constant_feature_moved_by_float_noise_stays_constant():
    """A column of 5.0 moved by a relative 1e-6 scales to exactly 0, as the unmoved one does; a real feature is untouched."""
    rng = np.random.default_rng(0)
    real = rng.normal(2.0, 0.5, 200)
    stats = {}
    for name, constant in (("exact", np.full(200, 5.0)), ("perturbed", 5.0 * (1 + 1e-6 * rng.normal(size=200)))):
        model = build_model("concat", {"audio": 2}, 6, TrainConfig(hidden=8))
        vectors = torch.tensor(np.stack([constant, real], 1), dtype=torch.float32)
        present = torch.ones(200, dtype=torch.bool)
        model.fit([{"audio": {"vector": vectors, "present": present}}])
        stats[name] = model.scale({"audio": {"vector": vectors, "present": present}})["audio"]["vector"]
    assert stats["exact"][:, 0].abs().max() == 0
    assert stats["perturbed"][:, 0].abs().max() == 0  # floored at 1e-4 of the mean: about 0.03; at 1e-6: about 3
    assert torch.allclose(stats["exact"][:, 1], stats["perturbed"][:, 1])
    assert abs(stats["exact"][:, 1].std(unbiased=False).item() - 1) < 1e-4


def test_linear_solves_logistic_regression_per_role_and_fuses_by_mean_probability(tmp_path):
    """``linear`` = sklearn's LogisticRegression per role on z-scored vectors; late fusion averages them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from mer.train.checkpoint import load_weights, save_weights

    n = 90
    batch = make_batch(n=n, seed=3, absent={"text": list(range(10))})
    y = torch.arange(n).numpy() % 3
    batch["audio"]["vector"][:, 0] += torch.as_tensor(y * 2.0)  # audio carries the label
    cfg = TrainConfig(linear_c=0.5)
    model = build_model("linear", DIMS, 6, cfg)
    model.fit([batch])
    model.model.solve(model.scale(batch), y, seed=0)
    model.eval()
    got = torch.softmax(model(batch), -1).detach().numpy()

    expected = []
    for role in sorted(DIMS):
        present = batch[role]["present"].numpy()
        x = batch[role]["vector"].numpy()[present]
        clf = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000).fit(
            StandardScaler().fit_transform(x), y[present])
        full = torch.zeros(n, 6).numpy()
        full[np.flatnonzero(present)[:, None], clf.classes_] = clf.predict_proba(
            StandardScaler().fit(x).transform(batch[role]["vector"].numpy()[present]))
        expected.append((full, present))
    total = sum(p * m[:, None] for p, m in expected)
    mean = total / sum(m[:, None].astype(float) for _, m in expected)
    np.testing.assert_allclose(got, mean, atol=1e-4)
    assert (got[:, 3:] < 1e-9).all()  # classes never seen in training get no probability

    save_weights(model, tmp_path / "w.safetensors")
    again = load_weights(build_model("linear", DIMS, 6, cfg), tmp_path / "w.safetensors").eval()
    assert torch.equal(again(batch), model(batch))


def test_modality_dropout_never_hides_every_modality_of_a_sample():
    from mer.models.augment import drop_modalities

    torch.manual_seed(0)
    batch = make_batch(n=400, absent={"video": list(range(100)), "text": list(range(50, 150))})
    out = drop_modalities(batch, 0.9)
    before = torch.stack([batch[r]["present"] for r in sorted(DIMS)], 1)
    after = torch.stack([out[r]["present"] for r in sorted(DIMS)], 1)
    assert after.any(1).all()  # every sample keeps one modality
    assert not (after & ~before).any()  # nothing absent comes back
    assert 0.5 < 1 - after.sum() / before.sum() < 0.85  # most are hidden at p = 0.9
    for r in DIMS:
        hidden = before[:, sorted(DIMS).index(r)] & ~out[r]["present"]
        assert (out[r]["vector"][hidden] == 0).all() and not out[r]["seq_mask"][hidden].any()


def test_agt_linear_skip_adds_per_role_linear_logits_of_present_roles():
    batch = make_batch(n=6, seed=2, absent={"text": [0, 1]})
    model = build_model("agt", DIMS, 6, TrainConfig(hidden=16, heads=2, linear_skip=True)).eval()
    agt = model.model
    with torch.no_grad():
        scaled = model.scale(batch)
        expected = agt.head(agt.fusion(scaled)[0])
        for role in DIMS:
            expected += scaled[role]["present"].float()[:, None] * agt.skip[role](scaled[role]["vector"])
        assert torch.allclose(model(batch), expected, atol=1e-6)
    plain = build_model("agt", DIMS, 6, TrainConfig(hidden=16, heads=2))
    assert plain.model.skip is None
