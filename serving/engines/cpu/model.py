"""A small Llama-style decoder written directly in torch, with a batched KV cache.

RMSNorm, rotary position embeddings, causal multi-head self-attention with a KV
cache, SwiGLU MLP and a (tied or untied) LM head. Weights come from a fixed
seed, so every process builds the same model without downloading anything.

The forward pass is split in two entry points that the engine's scheduler
drives:

* ``prefill(tokens, lengths, start_slot)``: right-padded prompts, one per new
  sequence, written into consecutive cache slots; returns logits at each
  prompt's last token.
* ``prefill_after_prefix(tokens, starts, lengths, start_slot)``: the same for
  prompts whose first ``starts[b]`` positions come from the prefix cache.
* ``decode(tokens, positions)``: one token for each of the first ``B`` slots
  (slot i holds running sequence i); keys beyond a sequence's own length are
  masked out, so sequences of different lengths share one batched step.

The LM head only scores the tokens the model may generate (``allowed_ids``);
logits column j is token ``allowed_ids[j]``. Special and [unused*] tokens can
therefore never be sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VOCAB_SIZE = 30522
CONTEXT_WINDOW = 2048


@dataclass(frozen=True)
class ModelConfig:
    name: str
    n_layers: int
    dim: int
    n_heads: int
    ffn_dim: int
    vocab_size: int = VOCAB_SIZE
    context_window: int = CONTEXT_WINDOW
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_gain: float = 2.0
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def n_params(self) -> int:
        d, f = self.dim, self.ffn_dim
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "tollgate-mini": ModelConfig("tollgate-mini", n_layers=2, dim=64, n_heads=4, ffn_dim=176, seed=1001),
    "tollgate-small": ModelConfig("tollgate-small", n_layers=4, dim=128, n_heads=4, ffn_dim=352, seed=1002),
    "tollgate-large": ModelConfig(
        "tollgate-large", n_layers=6, dim=256, n_heads=8, ffn_dim=688, tie_embeddings=False, seed=1003
    ),
}


def _pack_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN-packed copy of a linear weight, or None where oneDNN is unavailable.

    On the 2-core AMD dev box the packed LM head is 3-6x faster than MKL sgemm
    at batch 1-8, ~1.5x at 32, and gives bit-identical rows whatever the batch
    size (so batching never changes a greedy decode).
    """
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 32)
        probe = torch.ops.mkldnn._linear_pointwise(weight[:2], packed, None, "none", [], "")
        if not torch.allclose(probe, F.linear(weight[:2], weight), atol=1e-4, rtol=1e-4):
            return None
        return packed
    except (AttributeError, RuntimeError):
        return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


class LlamaModel:
    """Weights plus the KV cache of the sequences the scheduler is running."""

    def __init__(self, config: ModelConfig, allowed_ids: list[int] | None = None):
        self.config = c = config
        g = torch.Generator().manual_seed(c.seed)
        std = 0.02  # embeddings and untied head
        # Layer weights are initialised larger than a trained-from-scratch recipe
        # would: with 0.02 the residual stream of a random model is dominated by
        # the current token's embedding and greedy decoding just repeats it.
        # Sharper attention makes every output depend on the whole context, so
        # a batching bug (wrong slot, mask or position) changes the text.
        in_std = c.init_gain / math.sqrt(c.dim)
        out_std = 1.0 / math.sqrt(c.dim)
        ffn_out_std = 1.0 / math.sqrt(c.ffn_dim)

        def randn(*shape: int, scale: float) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * scale

        with torch.inference_mode():
            self.embed = randn(c.vocab_size, c.dim, scale=std)
            self.layers = []
            for _ in range(c.n_layers):
                self.layers.append(
                    (
                        torch.ones(c.dim),  # attention norm
                        randn(3 * c.dim, c.dim, scale=in_std),  # fused q, k, v
                        randn(c.dim, c.dim, scale=out_std),  # o
                        torch.ones(c.dim),  # mlp norm
                        randn(2 * c.ffn_dim, c.dim, scale=in_std),  # fused gate, up
                        randn(c.dim, c.ffn_dim, scale=ffn_out_std),  # down
                    )
                )
            self.final_norm = torch.ones(c.dim)
            head = self.embed if c.tie_embeddings else randn(c.vocab_size, c.dim, scale=std)
            if allowed_ids is None:
                allowed_ids = list(range(c.vocab_size))
            self.allowed_ids = torch.tensor(allowed_ids, dtype=torch.long)
            self.allowed_ids_list: list[int] = list(allowed_ids)
            # Block size for two-level CDF inversion when sampling: a divisor of
            # the head size near sqrt of it if there is one (no padding), else 256.
            n = len(allowed_ids)
            self.sample_block = next((b for b in range(int(math.isqrt(n)), 512) if n % b == 0), 256)
            # Only generable tokens get a row: the head is smaller and needs no mask.
            self.head = head.index_select(0, self.allowed_ids).contiguous()
            self._head_packed = _pack_linear_weight(self.head)

            hd = c.head_dim
            inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            freqs = torch.outer(torch.arange(c.context_window, dtype=torch.float32), inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self.rope_cos = emb.cos().contiguous()  # (context, hd)
            self.rope_sin = emb.sin().contiguous()
            # rotate_half(x) == x @ rot
            rot = torch.zeros(hd, hd)
            half = hd // 2
            rot[half:, :half] = -torch.eye(half)
            rot[:half, half:] = torch.eye(half)
            self.rope_rot = rot
        self.scale = 1.0 / math.sqrt(hd)

        # KV cache: (layers, slots, heads, capacity, head_dim), allocated on demand.
        self.max_slots: int | None = None  # the engine's max_num_seqs: never allocate more slots
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self._arange_cache = torch.arange(0)

    # ------------------------------------------------------------ KV cache
    @property
    def cache_slots(self) -> int:
        return 0 if self.k_cache is None else self.k_cache.shape[1]

    @property
    def cache_capacity(self) -> int:
        return 0 if self.k_cache is None else self.k_cache.shape[3]

    def ensure_cache(self, slots: int, length: int) -> None:
        """Make room for ``slots`` sequences of up to ``length`` positions (keeps contents)."""
        c = self.config
        cur_slots, cur_len = self.cache_slots, self.cache_capacity
        if slots <= cur_slots and length <= cur_len:
            return
        new_slots = max(slots, cur_slots)
        if new_slots > cur_slots:
            new_slots = max(new_slots, 2 * cur_slots, 4)
            if self.max_slots:
                new_slots = min(new_slots, max(self.max_slots, slots))
        new_len = max(length, cur_len)
        if new_len > cur_len:
            new_len = min(max(new_len, 2 * cur_len, 64), c.context_window)
        shape = (c.n_layers, new_slots, c.n_heads, new_len, c.head_dim)
        k = torch.zeros(shape)
        v = torch.zeros(shape)
        if self.k_cache is not None:
            k[:, :cur_slots, :, :cur_len] = self.k_cache
            v[:, :cur_slots, :, :cur_len] = self.v_cache
        self.k_cache, self.v_cache = k, v

    def release_cache(self) -> None:
        self.k_cache = self.v_cache = None

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's cache (first ``length`` positions) from slot ``src`` to ``dst``."""
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]

    def _arange(self, n: int) -> torch.Tensor:
        if self._arange_cache.shape[0] < n:
            self._arange_cache = torch.arange(max(n, 64))
        return self._arange_cache[:n]

    # ------------------------------------------------------------- forward
    def _lm_head(self, h: torch.Tensor) -> torch.Tensor:
        if self._head_packed is not None:
            return torch.ops.mkldnn._linear_pointwise(h, self._head_packed, None, "none", [], "")
        return F.linear(h, self.head)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + (x @ self.rope_rot) * sin

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, start_slot: int) -> torch.Tensor:
        """Run right-padded prompts ``tokens`` (B, T) into slots start_slot..start_slot+B-1.

        Returns logits (B, len(allowed_ids)) for each prompt's last real token.
        Padding sits after the real tokens, so the causal mask alone keeps it out.
        """
        c = self.config
        B, T = tokens.shape
        H, hd = c.n_heads, c.head_dim
        self.ensure_cache(start_slot + B, T)
        slots = slice(start_slot, start_slot + B)
        cos = self.rope_cos[:T].view(1, 1, T, hd)
        sin = self.rope_sin[:T].view(1, 1, T, hd)
        x = F.embedding(tokens, self.embed)  # (B, T, D)
        for li, (attn_norm, wqkv, wo, mlp_norm, w13, w2) in enumerate(self.layers):
            h = _rms_norm(x, attn_norm, c.norm_eps)
            qkv = F.linear(h, wqkv).view(B, T, 3 * H, hd).transpose(1, 2)  # (B, 3H, T, hd)
            qk = self._rope(qkv[:, : 2 * H], cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, 2 * H :]
            self.k_cache[li, slots, :, :T] = k
            self.v_cache[li, slots, :, :T] = v
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
            x = x + F.linear(a.transpose(1, 2).reshape(B, T, c.dim), wo)
            h = _rms_norm(x, mlp_norm, c.norm_eps)
            gate, up = F.linear(h, w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w2)
        last = x[self._arange(B), lengths - 1]  # (B, D)
        return self._lm_head(_rms_norm(last, self.final_norm, c.norm_eps))

    def write_prefix(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put a cached prompt prefix (layers, heads, length, head_dim) at positions 0.. of ``slot``."""
        n = keys.shape[2]
        self.k_cache[:, slot, :, :n] = keys
        self.v_cache[:, slot, :, :n] = values

    def read_prefix(self, slot: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of positions start..end-1 of ``slot``'s cache (layers, heads, end-start, head_dim)."""
        return (self.k_cache[:, slot, :, start:end].clone(), self.v_cache[:, slot, :, start:end].clone())

    def prefill_after_prefix(self, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                             start_slot: int) -> torch.Tensor:
        """Prefill the uncached rest of each prompt; positions 0..starts[b]-1 of its slot already hold the prefix.

        ``tokens`` (B, T) right-padded, row b holding ``lengths[b]`` new tokens at
        positions starts[b]...; returns logits at each prompt's last token. The
        caller has written each cached prefix into its slot (``write_prefix``).
        """
        c = self.config
        B, T = tokens.shape
        H, hd = c.n_heads, c.head_dim
        positions = starts.view(B, 1) + self._arange(T).view(1, T)  # (B, T)
        total = int(positions.max()) + 1
        self.ensure_cache(start_slot + B, total)
        slot_rows = torch.arange(start_slot, start_slot + B).view(B, 1)
        cos = self.rope_cos[positions].view(B, 1, T, hd)
        sin = self.rope_sin[positions].view(B, 1, T, hd)
        # Query t of row b sees keys 0..starts[b]+t (its cached prefix and its own prompt so far).
        mask = (self._arange(total).view(1, 1, total) <= positions.view(B, T, 1)).view(B, 1, T, total)
        x = F.embedding(tokens, self.embed)  # (B, T, D)
        slots = slice(start_slot, start_slot + B)
        for li, (attn_norm, wqkv, wo, mlp_norm, w13, w2) in enumerate(self.layers):
            h = _rms_norm(x, attn_norm, c.norm_eps)
            qkv = F.linear(h, wqkv).view(B, T, 3 * H, hd).transpose(1, 2)  # (B, 3H, T, hd)
            qk = self._rope(qkv[:, : 2 * H], cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, 2 * H :]
            kc, vc = self.k_cache[li], self.v_cache[li]  # (slots, H, cap, hd)
            kc[slot_rows, :, positions] = k.transpose(1, 2)  # (B, T, H, hd)
            vc[slot_rows, :, positions] = v.transpose(1, 2)
            a = F.scaled_dot_product_attention(q, kc[slots, :, :total], vc[slots, :, :total], attn_mask=mask)
            x = x + F.linear(a.transpose(1, 2).reshape(B, T, c.dim), wo)
            h = _rms_norm(x, mlp_norm, c.norm_eps)
            gate, up = F.linear(h, w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w2)
        last = x[self._arange(B), lengths - 1]  # (B, D)
        return self._lm_head(_rms_norm(last, self.final_norm, c.norm_eps))

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, max_len: int) -> torch.Tensor:
        """One step for the sequences in slots 0..B-1.

        ``tokens`` (B,) is each sequence's newest token, ``positions`` (B,) its
        position; ``max_len`` = max(positions) + 1. Returns logits (B, len(allowed_ids)).
        """
        c = self.config
        B = tokens.shape[0]
        H, hd = c.n_heads, c.head_dim
        T = max_len
        self.ensure_cache(B, T)
        rows = self._arange(B)
        cos = self.rope_cos[positions].view(B, 1, hd)
        sin = self.rope_sin[positions].view(B, 1, hd)
        # Key j of row b is visible iff j <= positions[b].
        mask = self._arange(T).view(1, T) <= positions.view(B, 1)
        mask = mask.view(B, 1, 1, T)
        x = F.embedding(tokens, self.embed)  # (B, D)
        k_all, v_all = self.k_cache, self.v_cache
        for li, (attn_norm, wqkv, wo, mlp_norm, w13, w2) in enumerate(self.layers):
            h = _rms_norm(x, attn_norm, c.norm_eps)
            qkv = F.linear(h, wqkv).view(B, 3 * H, hd)
            qk = self._rope(qkv[:, : 2 * H], cos, sin)
            kc, vc = k_all[li], v_all[li]  # (slots, H, cap, hd)
            kc[rows, :, positions] = qk[:, H:]
            vc[rows, :, positions] = qkv[:, 2 * H :]
            q = qk[:, :H].unsqueeze(2)  # (B, H, 1, hd)
            a = F.scaled_dot_product_attention(q, kc[:B, :, :T], vc[:B, :, :T], attn_mask=mask)
            x = x + F.linear(a.view(B, c.dim), wo)
            h = _rms_norm(x, mlp_norm, c.norm_eps)
            gate, up = F.linear(h, w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w2)
        return self._lm_head(_rms_norm(x, self.final_norm, c.norm_eps))

    def reference_logits(self, ids: list[int]) -> torch.Tensor:
        """Full-sequence forward without the cache (for tests): logits at the last position."""
        c = self.config
        T = len(ids)
        H, hd = c.n_heads, c.head_dim
        cos = self.rope_cos[:T].view(1, 1, T, hd)
        sin = self.rope_sin[:T].view(1, 1, T, hd)
        x = F.embedding(torch.tensor([ids]), self.embed)
        for attn_norm, wqkv, wo, mlp_norm, w13, w2 in self.layers:
            h = _rms_norm(x, attn_norm, c.norm_eps)
            qkv = F.linear(h, wqkv).view(1, T, 3 * H, hd).transpose(1, 2)
            q = self._rope(qkv[:, :H], cos, sin)
            k = self._rope(qkv[:, H : 2 * H], cos, sin)
            a = F.scaled_dot_product_attention(q, k, qkv[:, 2 * H :], is_causal=True)
            x = x + F.linear(a.transpose(1, 2).reshape(1, T, c.dim), wo)
            h = _rms_norm(x, mlp_norm, c.norm_eps)
            gate, up = F.linear(h, w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w2)
        return F.linear(_rms_norm(x[:, -1], self.final_norm, c.norm_eps), self.head)[0]
