"""Fusion models: shapes, missing-modality masks, AMF behaviour (fast, no Ray)."""

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
