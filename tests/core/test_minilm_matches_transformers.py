"""core.minilm's encoder gives the vectors transformers' BertModel gives, for the same weights and inputs.

The reference is the model card's pipeline run through transformers (BertModel, mean pooling over real
tokens, L2 normalisation). The batch mixes lengths so padding and its mask are exercised, and includes a
text past the router's cut and one at the model's 256-token limit.
"""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from core.minilm import MiniLMEncoder, model_path

TEXTS = [
    "hi",
    "Explain continuous batching in two sentences.",
    "What does a budget hold cost? " * 12,
    "¿Dónde está la estación? Ünïcödé, emoji 🚀 and tabs\tand newlines\n.",
    " ".join(f"word{i}" for i in range(400)),  # cut to 256 tokens below
]


@pytest.fixture(scope="module")
def rows():
    tokenizer = Tokenizer.from_file(f"{model_path()}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    return [enc.ids for enc in tokenizer.encode_batch(TEXTS)]


def reference_vectors(rows):
    from transformers import BertModel

    model = BertModel.from_pretrained(model_path(), local_files_only=True).eval()
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_batched_vectors_match_transformers(rows):
    assert max(len(r) for r in rows) == 256 and min(len(r) for r in rows) < 10
    ours = MiniLMEncoder().sentence_vectors(rows).numpy()
    expected = reference_vectors(rows)
    assert ours.shape == expected.shape == (len(TEXTS), 384)
    assert np.abs(ours - expected).max() < 2e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_text_alone_gets_the_vector_it_gets_in_a_padded_batch(rows):
    encoder = MiniLMEncoder()
    batched = encoder.sentence_vectors(rows).numpy()
    for i, row in enumerate(rows):
        alone = encoder.sentence_vectors([row]).numpy()[0]
        assert np.abs(alone - batched[i]).max() < 2e-5


def test_more_tokens_than_the_model_has_positions_is_refused():
    encoder = MiniLMEncoder()
    with pytest.raises(ValueError, match="at most 512"):
        encoder.sentence_vectors([[101] + [2000] * 600 + [102]])
