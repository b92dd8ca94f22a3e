"""Decode attention over a paged KV cache: one query token per sequence.

Layout (per layer): k_cache, v_cache (num_blocks, block_size, H_kv, D); q (S, H_q, D) with
H_q a multiple of H_kv (grouped-query heads: query head h reads kv head h // (H_q / H_kv));
block_tables (S, max_blocks) int32, row s lists the blocks of sequence s in order (entries past
its length are ignored); seq_lens (S,) int32 tokens of each sequence (>= 1).

``shared_prefix_attention`` serves sequences grouped by a common prefix: the prefix blocks of
group g (prefix_tables[g], prefix_lens[g] tokens) are read once for all its sequences, each
sequence's own suffix (suffix_tables[s], suffix_lens[s] >= 0 tokens) separately, and the two
partial results are merged with their log-sum-exps.
"""

from __future__ import annotations

import math

import torch


def check_paged_attention_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    allow_empty: bool = False,
) -> None:
    if q.dim() != 3:
        raise ValueError(f"paged_attention: q must be (S, H_q, D), got {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "paged_attention: k_cache and v_cache must both be (num_blocks, block_size, H_kv, D), "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    S, Hq, D = q.shape
    _, _, Hkv, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"paged_attention: head dim of q ({D}) and cache ({Dk}) differ")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"paged_attention: H_q={Hq} must be a multiple of H_kv={Hkv}")
    if q.dtype != k_cache.dtype or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"paged_attention: dtypes differ: q {q.dtype}, k {k_cache.dtype}, v {v_cache.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"paged_attention: q must be floating point, got {q.dtype}")
    if block_tables.dim() != 2 or block_tables.shape[0] != S or block_tables.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"paged_attention: block_tables must be an integer ({S}, max_blocks) tensor, "
            f"got {block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if seq_lens.shape != (S,) or seq_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"paged_attention: seq_lens must be an integer ({S},) tensor, got {tuple(seq_lens.shape)}")
    if S:
        lo = 0 if allow_empty else 1
        block_size = k_cache.shape[1]
        if int(seq_lens.min()) < lo:
            raise ValueError(f"paged_attention: seq_lens must be >= {lo}")
        if int(seq_lens.max()) > block_tables.shape[1] * block_size:
            raise ValueError("paged_attention: a sequence is longer than its block table covers")
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, seq_lens)}
    if len(devices) != 1:
        raise ValueError(f"paged_attention: all tensors must be on one device, got {devices}")


def _attend(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (S, H_q, D) float32, lse (S, H_q) float32); rows with length 0 get lse = -inf."""
    S, Hq, D = q.shape
    _, BS, Hkv, _ = k_cache.shape
    G = Hq // Hkv
    if S == 0:
        return q.new_zeros((0, Hq, D), dtype=torch.float32), q.new_zeros((0, Hq), dtype=torch.float32)
    Lmax = max(int(seq_lens.max()), 1)
    nb = math.ceil(Lmax / BS)
    bt = block_tables[:, :nb].long().clamp(min=0)  # (S, nb); entries past a length are masked
    T = nb * BS
    k = k_cache[bt].reshape(S, T, Hkv, D).float()  # (S, T, H_kv, D)
    v = v_cache[bt].reshape(S, T, Hkv, D).float()
    qg = q.reshape(S, Hkv, G, D).float()  # (S, H_kv, G, D)
    logits = torch.einsum("shgd,sthd->shgt", qg, k) * scale  # (S, H_kv, G, T)
    pad = torch.arange(T, device=q.device)[None, :] >= seq_lens.long()[:, None]  # (S, T)
    logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # (S, H_kv, G)
    p = torch.exp(logits - lse.unsqueeze(-1).clamp(min=-1e30)).nan_to_num(0.0)
    out = torch.einsum("shgt,sthd->shgd", p, v)
    return out.reshape(S, Hq, D), lse.reshape(S, Hq)


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    check_paged_attention_args(q, k_cache, v_cache, block_tables, seq_lens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, _ = _attend(q, k_cache, v_cache, block_tables, seq_lens, scale)
    return out.to(q.dtype)


def merge_attention(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> torch.Tensor:
    """Combine two softmax-attention partials over disjoint key sets. out (S, H, D), lse (S, H)."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)  # (S, H)
    return (out_a * wa.unsqueeze(-1) + out_b * wb.unsqueeze(-1)) / (wa + wb).unsqueeze(-1)


def check_shared_prefix_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    seq_group: torch.Tensor,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
) -> None:
    check_paged_attention_args(q, k_cache, v_cache, suffix_tables, suffix_lens, allow_empty=True)
    Gn = prefix_tables.shape[0] if prefix_tables.dim() == 2 else -1
    if prefix_tables.dim() != 2 or prefix_tables.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"shared_prefix_attention: prefix_tables must be an integer (G, blocks) tensor, got {tuple(prefix_tables.shape)}")
    if prefix_lens.shape != (Gn,) or prefix_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"shared_prefix_attention: prefix_lens must be an integer ({Gn},) tensor")
    if seq_group.shape != (q.shape[0],) or seq_group.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"shared_prefix_attention: seq_group must be an integer ({q.shape[0]},) tensor")
    if q.shape[0] and (int(seq_group.min()) < 0 or int(seq_group.max()) >= Gn):
        raise ValueError(f"shared_prefix_attention: seq_group entries must be in [0, {Gn})")
    if Gn and int(prefix_lens.max()) > prefix_tables.shape[1] * k_cache.shape[1]:
        raise ValueError("shared_prefix_attention: a prefix is longer than its block table covers")
    if q.shape[0] and bool(((prefix_lens.long()[seq_group.long()] + suffix_lens.long()) < 1).any()):
        raise ValueError("shared_prefix_attention: every sequence needs at least one token")


def shared_prefix_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    seq_group: torch.Tensor,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    check_shared_prefix_args(q, k_cache, v_cache, prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    S, Hq, D = q.shape
    _, BS, Hkv, _ = k_cache.shape
    G = Hq // Hkv
    out_p = torch.zeros((S, Hq, D), dtype=torch.float32, device=q.device)
    lse_p = torch.full((S, Hq), float("-inf"), dtype=torch.float32, device=q.device)
    grp = seq_group.long()
    for g in range(prefix_tables.shape[0]):
        members = (grp == g).nonzero().flatten()
        L = int(prefix_lens[g])
        if members.numel() == 0 or L == 0:
            continue
        nb = math.ceil(L / BS)
        blocks = prefix_tables[g, :nb].long()
        k = k_cache[blocks].reshape(nb * BS, Hkv, D)[:L].float()  # (L, H_kv, D), read once
        v = v_cache[blocks].reshape(nb * BS, Hkv, D)[:L].float()
        qg = q[members].reshape(-1, Hkv, G, D).float()  # (n, H_kv, G, D)
        logits = torch.einsum("nhgd,thd->nhgt", qg, k) * scale
        lse = torch.logsumexp(logits, dim=-1)  # (n, H_kv, G)
        o = torch.einsum("nhgt,thd->nhgd", torch.exp(logits - lse.unsqueeze(-1)), v)
        out_p[members] = o.reshape(-1, Hq, D)
        lse_p[members] = lse.reshape(-1, Hq)
    out_s, lse_s = _attend(q, k_cache, v_cache, suffix_tables, suffix_lens, scale)
    return merge_attention(out_p, lse_p, out_s, lse_s).to(q.dtype)
