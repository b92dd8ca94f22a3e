"""Decode attention over the paged cache for CPU tensors: the contract of
``ponder.kernels.shared_prefix_attention`` (same arguments, same result), in fewer and larger
torch ops.

Why a CPU path of our own: on the CPU the kernels' PyTorch reference is written for clarity and
safety (it zeroes the gathered keys/values past each length, contracts with ``einsum``, which
copies the gathered keys into a head-major layout, and checks every argument per call); at
batch 64 over SmolLM2 it took 56% of a decode step and made the whole engine slower than
transformers' ``generate`` (265 s against 182 s for 64×256 tokens, one thread). Per layer,
64 rows × 212 tokens, one thread: reference 8.6–13 ms, this path ~5 ms, of which ~2 ms is the
unavoidable gather of each row's blocks.

How: a row's keys are gathered as ``(T·H_kv, D)`` rows (the cache's own order, no transpose),
and one ``bmm`` takes every query head against every kv head; the wanted (query head, its kv
head) pairs are the diagonal of a ``(H_kv, G, T, H_kv)`` view. That spends H_kv× the attention
FLOPs (3× for SmolLM2: ~0.05 GFLOP a layer, noise next to the gather) to avoid copying the
keys. Values go the same way through a block-diagonal probability matrix. A group's shared
prefix is gathered once and multiplied against all its rows' queries in one ``bmm``; prefix and
suffix scores share one softmax.

Unused cache slots are never NaN here: :class:`~ponder.workers.engine.kv_cache.BlockPool`
zeroes each block the first time it hands it out, so masked slots (probability 0) times their
values stay 0.
"""

from __future__ import annotations

import math

import torch


def _block_diagonal(p: torch.Tensor) -> torch.Tensor:
    """p (N, R, G, T, H_kv) → (N, R·H_kv·G, T·H_kv): row (r, h, g) holds p[:, r, g, :, h] at
    columns t·H_kv + h, zeros elsewhere (each query head only weighs its own kv head)."""
    N, R, G, T, Hkv = p.shape
    z = p.new_zeros((N, R, Hkv, G, T, Hkv))
    z.diagonal(dim1=2, dim2=5).copy_(p)
    return z.view(N, R * Hkv * G, T * Hkv)


def _scores(q: torch.Tensor, keys: torch.Tensor, Hkv: int) -> torch.Tensor:
    """q (N, R, H_q, D), keys (N, T·H_kv, D) → (N, R, G, T, H_kv): each query head's scores
    against its own kv head, for R query rows sharing the keys."""
    N, R, Hq, D = q.shape
    T = keys.shape[1] // Hkv
    s = torch.bmm(q.reshape(N, R * Hq, D), keys.transpose(1, 2))  # (N, R·H_q, T·H_kv): all pairs
    return s.view(N, R, Hkv, Hq // Hkv, T, Hkv).diagonal(dim1=2, dim2=5)


def shared_prefix_attention_cpu(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_tables: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
    seq_group: torch.Tensor | None,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q (S, H_q, D); caches (num_blocks, block_size, H_kv, D); prefix_tables (G, nb) with
    prefix_lens (G,) and seq_group (S,), or all three None (plain paged attention);
    suffix_tables (S, nb), suffix_lens (S,). Returns (S, H_q, D) in q's dtype."""
    S, Hq, D = q.shape
    _, BS, Hkv, _ = k_cache.shape
    G = Hq // Hkv
    dev = q.device
    qf = q.float()
    # -- each row's own blocks
    slens = suffix_lens.long()
    nbs = max(1, math.ceil(int(slens.max()) / BS))
    Ts = nbs * BS
    bt = suffix_tables[:, :nbs].long()
    ks = k_cache[bt].view(S, Ts * Hkv, D).float()  # (S, Ts·H_kv, D)
    vs = v_cache[bt].view(S, Ts * Hkv, D).float()
    parts = [_scores(qf.unsqueeze(1), ks, Hkv)[:, 0]]  # (S, G, Ts, H_kv)
    valid = [torch.arange(Ts, device=dev)[None, :] < slens[:, None]]  # (S, Ts)
    # -- the shared prefixes, each gathered once for its group
    Tp = 0
    rows = None
    if prefix_tables is not None and prefix_lens is not None and seq_group is not None:
        plens = prefix_lens.long()
        grp = seq_group.long()
        row_len = plens[grp]  # (S,)
        rows = (row_len > 0).nonzero().flatten()
        if rows.numel():
            gids, g_of_row = torch.unique(grp[rows], return_inverse=True)  # groups with a prefix
            counts = torch.bincount(g_of_row, minlength=gids.numel())
            order = torch.argsort(g_of_row, stable=True)
            slot = torch.empty_like(g_of_row)
            slot[order] = torch.arange(rows.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[g_of_row[order]]
            Gp, M = gids.numel(), int(counts.max())
            nbp = math.ceil(int(plens[gids].max()) / BS)
            Tp = nbp * BS
            pbt = prefix_tables[gids, :nbp].long()
            kp = k_cache[pbt].view(Gp, Tp * Hkv, D).float()  # (Gp, Tp·H_kv, D)
            vp = v_cache[pbt].view(Gp, Tp * Hkv, D).float()
            qpad = qf.new_zeros((Gp, M, Hq, D))
            qpad[g_of_row, slot] = qf[rows]
            sp = _scores(qpad, kp, Hkv)  # (Gp, M, G, Tp, H_kv)
            pre = qf.new_zeros((S, G, Tp, Hkv))  # masked out below for rows without a prefix
            pre[rows] = sp[g_of_row, slot]
            parts.insert(0, pre)
            valid.insert(0, torch.arange(Tp, device=dev)[None, :] < row_len[:, None])
    scores = torch.cat(parts, dim=2) * scale  # (S, G, Tp+Ts, H_kv)
    scores.masked_fill_(~torch.cat(valid, dim=1)[:, None, :, None], float("-inf"))
    p = torch.softmax(scores, dim=2)  # every row has >= 1 valid slot (its newest token)
    out = torch.bmm(_block_diagonal(p[:, None, :, Tp:]), vs)  # (S, H_q, D)
    if Tp and rows is not None and rows.numel():
        ppad = p.new_zeros((Gp, M, G, Tp, Hkv))
        ppad[g_of_row, slot] = p[rows, :, :Tp]
        op = torch.bmm(_block_diagonal(ppad), vp)  # (Gp, M·H_q, D)
        out[rows] += op.view(Gp, M, Hq, D)[g_of_row, slot]
    return out.to(q.dtype)
