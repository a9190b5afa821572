"""Chinese transcripts through the text role: a character vocabulary, a length limit, empty transcripts."""

import numpy as np
import pandas as pd
import pytest
import torch

from mer.config import EncoderSpec

TEXTS = ["我跟你说了十遍，你还是不理我！", "太好了，我太喜欢这个蛋糕了！", "我不知道该怎么办了。", "要是明天之前合同还没准备好怎么办？"]


@pytest.fixture(scope="module")
def char_bert(tmp_path_factory):
    """A 2-layer BERT whose WordPiece vocabulary is every character of the demo's Chinese sentences (no download)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from mer.corpus.demo import NEUTRAL_TEXT_ZH, SLOTS_ZH, TEXT_ZH

    folder = tmp_path_factory.mktemp("char_bert")
    chars = sorted({c for t in [*NEUTRAL_TEXT_ZH, *sum(TEXT_ZH.values(), []), *sum(SLOTS_ZH.values(), [])] for c in t
                    if c not in "{}"})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), tokenize_chinese_chars=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(chars) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder, tokenizer


def test_chinese_is_split_into_known_characters(char_bert):
    _, tokenizer = char_bert
    tokens = tokenizer.tokenize(TEXTS[0])
    assert tokens[:4] == ["我", "跟", "你", "说"] and "[UNK]" not in tokens


def test_text_role_encodes_chinese_within_the_models_length_limit(char_bert):
    from mer.encoders import build_encoder

    folder, _ = char_bert
    enc = build_encoder(EncoderSpec(alias="hf_text", model=str(folder), layers=[-1], seq_len=4))
    long = "我不知道该怎么办了。" * 40  # 400 characters: past the 64 positions the model has
    out = enc.encode([*TEXTS, long])
    assert enc.max_tokens == 64 and len(out) == 5
    vectors = np.stack([v for v, _ in out])
    assert vectors.shape == (5, 32) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])  # different sentences, different features
    assert all(s.shape == (4, 32) for _, s in out)
    again = enc.encode([TEXTS[0]])[0][0]
    np.testing.assert_allclose(again, vectors[0], atol=1e-5)  # padding in a batch changes nothing


def test_an_empty_transcript_is_an_absent_text_modality(tmp_path):
    from mer.corpus.validate import validate_manifest
    from mer.encoders.base import row_text
    from mer.errors import MerError

    pd.DataFrame({"sample_id": ["a", "b"], "text": [TEXTS[0], "  "], "split": ["unlabeled"] * 2}).to_csv(
        tmp_path / "m.csv", index=False)
    result = validate_manifest(tmp_path / "m.csv", ["sad"], check_media=False)
    assert result.clean["has_text"].tolist() == [True] and result.quarantine["reason"].tolist() == [
        "no usable modality (no video, audio or text)"]
    with pytest.raises(MerError, match="row has no text"):
        row_text({"sample_id": "b", "text": "  "})
