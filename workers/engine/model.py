"""Our forward pass for Llama-family decoders (Llama, Qwen2 with its qkv biases, Mistral).

The weights come from a transformers model (loaded from a local directory or a GGUF file);
q/k/v and gate/up projections are fused into one matrix each so a decode step runs 4 GEMMs per
layer instead of 7. RoPE tables come from the model's own rotary module, so every rope type
transformers implements with a fixed table (default, linear, llama3, yarn) matches it.

Two entry points, both writing the new keys and values into the paged pool:
- :meth:`EngineModel.extend`: T new tokens of one sequence after C cached ones (prefill):
  dense causal attention over (cached + new) keys with torch's SDPA.
- :meth:`EngineModel.decode`: one new token for each of B sequences: attention over the paged
  cache through ``ponder.kernels`` (see :mod:`ponder.workers.engine.attention`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ponder.proto.errors import InvalidArgument
from ponder.workers.engine.kv_cache import BlockPool

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral")
# Rope types whose table depends on the sequence length at run time: not supported.
_DYNAMIC_ROPE = ("dynamic", "longrope")


@dataclass
class LayerWeights:
    ln1: torch.Tensor  # (D,)
    wqkv: torch.Tensor  # ((H_q + 2 H_kv) Dh, D)
    bqkv: torch.Tensor | None
    wo: torch.Tensor  # (D, H_q Dh)
    bo: torch.Tensor | None
    ln2: torch.Tensor  # (D,)
    wgu: torch.Tensor  # (2 I, D): gate rows then up rows
    bgu: torch.Tensor | None
    wdown: torch.Tensor  # (D, I)
    bdown: torch.Tensor | None


def _cat_bias(*linears: Any) -> torch.Tensor | None:
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return None
    # a missing bias is zeros on the weight's device and in its dtype (a CUDA or bf16 model's
    # biases would not concatenate with CPU fp32 zeros)
    return torch.cat([
        b.detach() if b is not None else lin.weight.new_zeros(lin.out_features) for b, lin in zip(biases, linears)
    ])


def _bias(linear: Any) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def sliding_window_of(cfg: Any) -> int | None:
    """The attention window a config applies to any layer, or None for full attention."""
    window = getattr(cfg, "sliding_window", None)
    if window is None:
        return None
    if cfg.model_type == "qwen2":
        layer_types = getattr(cfg, "layer_types", None) or []
        if not getattr(cfg, "use_sliding_window", False) and "sliding_attention" not in layer_types:
            return None
    return int(window)


class EngineModel:
    """The weights of one model, and the two forwards over a :class:`BlockPool`."""

    def __init__(self, hf_model: Any, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        cfg = hf_model.config
        if cfg.model_type not in SUPPORTED_ARCHS:
            raise InvalidArgument(
                "model", f"the engine runs {', '.join(SUPPORTED_ARCHS)} models, not {cfg.model_type!r}; "
                "use the transformers backend"
            )
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") in _DYNAMIC_ROPE:
            raise InvalidArgument("model", f"rope type {rope['rope_type']!r} is not supported by the engine")
        from transformers.activations import ACT2FN

        self.dtype = dtype
        self.device = torch.device(device)
        self.n_layers = int(cfg.num_hidden_layers)
        self.hidden_size = int(cfg.hidden_size)
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.hidden_size // self.n_heads)
        self.vocab_size = int(cfg.vocab_size)
        self.eps = float(cfg.rms_norm_eps)
        self.act: Callable[[torch.Tensor], torch.Tensor] = ACT2FN[cfg.hidden_act]
        self.max_positions = int(cfg.max_position_embeddings)
        self.sliding_window = sliding_window_of(cfg)
        self.scale = self.head_dim**-0.5

        def t(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to(device=self.device, dtype=dtype).contiguous()

        def t_opt(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else t(x)

        base = hf_model.get_decoder()
        self.embed = t(base.embed_tokens.weight)  # (V, D)
        self.norm = t(base.norm.weight)  # (D,)
        self.lm_head = t(hf_model.get_output_embeddings().weight)  # (V, D)
        self.layers: list[LayerWeights] = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                LayerWeights(
                    ln1=t(layer.input_layernorm.weight),
                    wqkv=t(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                    bqkv=t_opt(_cat_bias(a.q_proj, a.k_proj, a.v_proj)),
                    wo=t(a.o_proj.weight),
                    bo=t_opt(_bias(a.o_proj)),
                    ln2=t(layer.post_attention_layernorm.weight),
                    wgu=t(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                    bgu=t_opt(_cat_bias(m.gate_proj, m.up_proj)),
                    wdown=t(m.down_proj.weight),
                    bdown=t_opt(_bias(m.down_proj)),
                )
            )
        self._rotary = base.rotary_emb
        self._cos = torch.empty((0, self.head_dim), dtype=dtype, device=self.device)
        self._sin = torch.empty((0, self.head_dim), dtype=dtype, device=self.device)

    # -- pieces -----------------------------------------------------------------------------

    def rope_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (n', Dh) for positions 0..n'-1, n' >= n (grown by doubling)."""
        if self._cos.shape[0] < n:
            size = max(n, 2 * self._cos.shape[0], 256)
            probe = torch.empty((), dtype=self.dtype, device=self.device)
            pos = torch.arange(size, device=self.device).unsqueeze(0)
            cos, sin = self._rotary(probe, pos)  # (1, size, Dh), attention scaling included
            self._cos, self._sin = cos[0].contiguous(), sin[0].contiguous()
        return self._cos, self._sin

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # transformers normalises in fp32 and casts back before the weight.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    def _qkv(self, x: torch.Tensor, w: LayerWeights, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (N, D) → q (N, H_q, Dh), k (N, H_kv, Dh), v (N, H_kv, Dh), rope applied."""
        N = x.shape[0]
        Hq, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = F.linear(self._rms(x, w.ln1), w.wqkv, w.bqkv).view(N, Hq + 2 * Hkv, Dh)
        qk = qkv[:, : Hq + Hkv]  # rope on q and k heads at once
        half = Dh // 2
        rot = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
        qk = qk * cos.unsqueeze(1) + rot * sin.unsqueeze(1)
        return qk[:, :Hq], qk[:, Hq:], qkv[:, Hq + Hkv :]

    def _out_mlp(self, x: torch.Tensor, attn: torch.Tensor, w: LayerWeights) -> torch.Tensor:
        """Residual adds of the attention output projection and the gated MLP. attn (N, H_q Dh)."""
        x = x + F.linear(attn, w.wo, w.bo)
        gu = F.linear(self._rms(x, w.ln2), w.wgu, w.bgu)  # (N, 2I)
        inter = gu.shape[-1] // 2
        return x + F.linear(self.act(gu[:, :inter]) * gu[:, inter:], w.wdown, w.bdown)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._rms(x, self.norm)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, D), already final-normed → logits (B, V) float32."""
        return F.linear(hidden, self.lm_head).float()

    def check_positions(self, n: int) -> None:
        limit = self.max_positions
        if self.sliding_window is not None:
            limit = min(limit, self.sliding_window)
        if n > limit:
            raise InvalidArgument(
                "prompt", f"{n} tokens exceed the engine's context limit of {limit} for this model"
            )

    # -- forwards ---------------------------------------------------------------------------

    @torch.inference_mode()
    def extend(self, pool: BlockPool, tokens: list[int], start: int, slots: list[int]) -> torch.Tensor:
        """Run ``tokens`` at positions start.. of a sequence whose first ``start`` tokens are
        cached at the first ``start`` of ``slots``' sequence; ``slots`` lists the flat slot of
        every position 0..start+T-1. Writes the new keys/values; returns final-normed hidden
        states (T, D)."""
        T = len(tokens)
        total = start + T
        assert len(slots) == total
        cos, sin = self.rope_tables(total)
        cos, sin = cos[start:total], sin[start:total]  # (T, Dh)
        all_slots = torch.tensor(slots, device=self.device)
        new_slots = all_slots[start:]
        x = self.embed[torch.tensor(tokens, device=self.device)]  # (T, D)
        Hq, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        mask = None
        if start:
            # query i (position start+i) sees keys 0..start+i
            mask = torch.arange(total, device=self.device)[None, :] <= (start + torch.arange(T, device=self.device))[:, None]
        for li, w in enumerate(self.layers):
            q, k, v = self._qkv(x, w, cos, sin)
            kf = pool.k[li].view(-1, Hkv, Dh)  # (NB*BS, H_kv, Dh)
            vf = pool.v[li].view(-1, Hkv, Dh)
            kf.index_copy_(0, new_slots, k)
            vf.index_copy_(0, new_slots, v)
            keys = kf.index_select(0, all_slots) if start else k  # (start+T, H_kv, Dh)
            vals = vf.index_select(0, all_slots) if start else v
            o = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0),  # (1, H_q, T, Dh)
                keys.transpose(0, 1).unsqueeze(0),  # (1, H_kv, start+T, Dh)
                vals.transpose(0, 1).unsqueeze(0),
                attn_mask=mask,
                is_causal=mask is None,
                scale=self.scale,
                enable_gqa=Hq != Hkv,
            )  # (1, H_q, T, Dh)
            x = self._out_mlp(x, o[0].transpose(0, 1).reshape(T, Hq * Dh), w)
        return self.final_norm(x)

    @torch.inference_mode()
    def decode(
        self,
        pool: BlockPool,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One token per row. tokens, positions, slots: (B,) int64. ``attend(q, k_cache,
        v_cache)`` → (B, H_q, Dh) reads each row's whole sequence (this token included).
        Returns final-normed hidden states (B, D)."""
        B = tokens.shape[0]
        cos, sin = self.rope_tables(int(positions.max()) + 1)
        cos, sin = cos[positions], sin[positions]  # (B, Dh)
        x = self.embed[tokens]  # (B, D)
        Hkv, Dh = self.n_kv_heads, self.head_dim
        for li, w in enumerate(self.layers):
            q, k, v = self._qkv(x, w, cos, sin)
            kc, vc = pool.k[li], pool.v[li]  # (NB, BS, H_kv, Dh)
            kc.view(-1, Hkv, Dh).index_copy_(0, slots, k)
            vc.view(-1, Hkv, Dh).index_copy_(0, slots, v)
            o = attend(q.contiguous(), kc, vc)  # (B, H_q, Dh)
            x = self._out_mlp(x, o.reshape(B, -1), w)
        return self.final_norm(x)
