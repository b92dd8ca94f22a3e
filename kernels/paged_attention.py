"""Decode attention over a paged KV cache: one query token per sequence.

Layout (per layer): k_cache, v_cache (num_blocks, block_size, H_kv, D); q (S, H_q, D) with
H_q a multiple of H_kv (grouped-query heads: query head h reads kv head h // (H_q / H_kv));
block_tables (S, max_blocks) int32, row s lists the blocks of sequence s in order (entries past
its length are ignored); seq_lens (S,) int32 tokens of each sequence (>= 1).

``shared_prefix_attention`` serves sequences grouped by a common prefix: seq_group (S,) names
each sequence's group; the prefix blocks of group g (prefix_tables[g], prefix_lens[g] >= 0
tokens) are read once for the group's sequences, each sequence's own suffix (suffix_tables[s],
suffix_lens[s] >= 0 tokens) separately, and the two partial results are merged with their
log-sum-exps. Every sequence needs at least one token in all.

Both return (S, H_q, D) in q's dtype; ``scale`` defaults to 1/sqrt(D). Block-table entries a
length reaches must name real cache blocks; entries past it are never read (-1 is fine there).

Triton: ``_paged_attention_kernel`` runs one program per (sequence, kv head) with the G query
heads of that kv head as the rows of one tile, an online softmax over KV trips of BLOCK_N tokens
gathered through the block table. ``_prefix_attention_kernel`` runs one program per (group, kv
head, chunk of members) with members x heads as the rows, so each prefix block is loaded once
per chunk of up to 64 query rows and multiplied against all of them; it writes fp32 partials
(out, lse) that the paged kernel, run over the suffixes, merges in its epilogue.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ponder.kernels.dispatch import check_launchable, is_interpreted, next_pow2


def check_paged_attention_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    allow_empty: bool = False,
    op: str = "paged_attention",
    tables: str = "block_tables",
    lens: str = "seq_lens",
    values: bool = True,
) -> None:
    """Raise ValueError naming the argument on any shape, dtype, device or range mismatch.
    ``op``/``tables``/``lens`` name the caller's arguments in the messages. ``values=False``
    skips the checks that read tensor contents (lengths, block ids): each costs a device sync."""
    if q.dim() != 3:
        raise ValueError(f"{op}: q must be (S, H_q, D), got {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"{op}: k_cache and v_cache must both be (num_blocks, block_size, H_kv, D), "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    S, Hq, D = q.shape
    _, block_size, Hkv, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"{op}: head dim of q ({D}) and cache ({Dk}) differ")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{op}: H_q={Hq} must be a multiple of H_kv={Hkv}")
    if block_size == 0:
        raise ValueError(f"{op}: block_size (k_cache.shape[1]) must be >= 1")
    if q.dtype != k_cache.dtype or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"{op}: dtypes differ: q {q.dtype}, k {k_cache.dtype}, v {v_cache.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"{op}: q must be floating point, got {q.dtype}")
    if block_tables.dim() != 2 or block_tables.shape[0] != S or block_tables.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{op}: {tables} must be an integer ({S}, max_blocks) tensor, "
            f"got {block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if seq_lens.shape != (S,) or seq_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: {lens} must be an integer ({S},) tensor, got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, seq_lens)}
    if len(devices) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {devices}")
    if S and values:
        lo = 0 if allow_empty else 1
        if int(seq_lens.min()) < lo:
            raise ValueError(f"{op}: {lens} must be >= {lo}")
        if int(seq_lens.max()) > block_tables.shape[1] * block_size:
            raise ValueError(f"{op}: a sequence is longer than its {tables} row covers")
        check_block_entries(op, tables, block_tables, seq_lens, block_size, k_cache.shape[0])


def check_block_entries(
    op: str, name: str, tables: torch.Tensor, lens: torch.Tensor, block_size: int, num_blocks: int
) -> None:
    """Every block a length reaches must name a real cache block; entries past it are ignored
    (they may hold -1 or stale ids), so a kernel never reads outside the cache."""
    if tables.numel() == 0:
        return
    needed = (lens.long() + block_size - 1) // block_size  # (N,) blocks in use per row
    used = torch.arange(tables.shape[1], device=tables.device)[None, :] < needed[:, None]
    bad = used & ((tables < 0) | (tables >= num_blocks))
    if bool(bad.any()):
        row, col = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{op}: {name}[{row}, {col}] = {int(tables[row, col])} is not a block of the "
            f"{num_blocks}-block cache"
        )


def _attend_groups(
    qg: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of M query rows per group over the group's keys, each group's keys gathered once.

    qg (N, M, H_kv, G, D); tables (N, blocks); lens (N,) >= 0. Returns out (N, M, H_kv, G, D)
    float32 and lse (N, M, H_kv, G) float32; a group of length 0 gets out = 0, lse = -inf.
    """
    N, M, Hkv, G, D = qg.shape
    BS = k_cache.shape[1]
    nb = max(math.ceil(int(lens.max()) / BS), 1) if N else 1
    bt = tables[:, :nb].long()  # (N, nb)
    used = torch.arange(nb, device=qg.device)[None, :] * BS < lens.long()[:, None]
    bt = torch.where(used, bt, torch.zeros_like(bt))  # entries past a length may be -1 or stale
    T = nb * BS
    pad = torch.arange(T, device=qg.device)[None, :] >= lens.long()[:, None]  # (N, T)
    # zero the slots past each length: a cache from torch.empty may hold NaN there, and
    # 0 * NaN in the p @ v product would poison the row
    k = k_cache[bt].reshape(N, T, Hkv, D).float().masked_fill(pad[:, :, None, None], 0.0)  # (N, T, H_kv, D)
    v = v_cache[bt].reshape(N, T, Hkv, D).float().masked_fill(pad[:, :, None, None], 0.0)
    logits = torch.einsum("nmhgd,nthd->nmhgt", qg.float(), k) * scale  # (N, M, H_kv, G, T)
    logits = logits.masked_fill(pad[:, None, None, None, :], float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # (N, M, H_kv, G)
    p = torch.exp(logits - lse.unsqueeze(-1)).nan_to_num(0.0)  # an empty row: exp(-inf + inf) -> 0
    out = torch.einsum("nmhgt,nthd->nmhgd", p, v)
    return out, lse


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
    Hkv = k_cache.shape[2]
    if S == 0:
        return q.new_zeros((0, Hq, D), dtype=torch.float32), q.new_zeros((0, Hq), dtype=torch.float32)
    out, lse = _attend_groups(q.reshape(S, 1, Hkv, Hq // Hkv, D), k_cache, v_cache, block_tables, seq_lens, scale)
    return out.reshape(S, Hq, D), lse.reshape(S, Hq)


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    validate: bool = True,
) -> torch.Tensor:
    check_paged_attention_args(q, k_cache, v_cache, block_tables, seq_lens, values=validate)
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
    values: bool = True,
) -> None:
    check_paged_attention_args(
        q, k_cache, v_cache, suffix_tables, suffix_lens,
        allow_empty=True, op="shared_prefix_attention", tables="suffix_tables", lens="suffix_lens", values=values,
    )
    op = "shared_prefix_attention"
    Gn = prefix_tables.shape[0] if prefix_tables.dim() == 2 else -1
    if prefix_tables.dim() != 2 or prefix_tables.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{op}: prefix_tables must be an integer (G, blocks) tensor, got {prefix_tables.dtype} {tuple(prefix_tables.shape)}"
        )
    if prefix_lens.shape != (Gn,) or prefix_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: prefix_lens must be an integer ({Gn},) tensor, got {prefix_lens.dtype} {tuple(prefix_lens.shape)}")
    S = q.shape[0]
    if seq_group.shape != (S,) or seq_group.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: seq_group must be an integer ({S},) tensor, got {seq_group.dtype} {tuple(seq_group.shape)}")
    if len({t.device for t in (q, prefix_tables, prefix_lens, seq_group)}) != 1:
        raise ValueError(f"{op}: all tensors must be on one device")
    if not values:
        return
    if S and (int(seq_group.min()) < 0 or int(seq_group.max()) >= Gn):
        raise ValueError(f"{op}: seq_group entries must be in [0, {Gn})")
    if Gn > 0:
        if int(prefix_lens.min()) < 0:
            raise ValueError(f"{op}: prefix_lens must be >= 0")
        if int(prefix_lens.max()) > prefix_tables.shape[1] * k_cache.shape[1]:
            raise ValueError(f"{op}: a prefix is longer than its prefix_tables row covers")
        check_block_entries(op, "prefix_tables", prefix_tables, prefix_lens, k_cache.shape[1], k_cache.shape[0])
    if S and bool(((prefix_lens.long()[seq_group.long()] + suffix_lens.long()) < 1).any()):
        raise ValueError(f"{op}: every sequence needs at least one token (prefix + suffix)")


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
    *,
    validate: bool = True,
) -> torch.Tensor:
    check_shared_prefix_args(
        q, k_cache, v_cache, prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens, values=validate
    )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    S, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    Gn = prefix_tables.shape[0]
    out_p = torch.zeros((S, Hq, D), dtype=torch.float32, device=q.device)
    lse_p = torch.full((S, Hq), float("-inf"), dtype=torch.float32, device=q.device)
    if S and int(prefix_lens.max()) > 0:
        # pad each group's members into (Gn, M_max) slots so each prefix is gathered once
        grp = seq_group.long()
        counts = torch.bincount(grp, minlength=Gn)  # (Gn,)
        order = torch.argsort(grp, stable=True)  # sequences grouped by group
        slot = torch.arange(S, device=q.device) - (torch.cumsum(counts, 0) - counts)[grp[order]]
        qpad = q.new_zeros((Gn, int(counts.max()), Hkv, Hq // Hkv, D), dtype=torch.float32)
        qpad[grp[order], slot] = q[order].reshape(S, Hkv, Hq // Hkv, D).float()
        o, lse = _attend_groups(qpad, k_cache, v_cache, prefix_tables, prefix_lens, scale)
        out_p[order] = o[grp[order], slot].reshape(S, Hq, D)
        lse_p[order] = lse[grp[order], slot].reshape(S, Hq)
    out_s, lse_s = _attend(q, k_cache, v_cache, suffix_tables, suffix_lens, scale)
    return merge_attention(out_p, lse_p, out_s, lse_s).to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Triton. Online softmax in base 2 (scores pre-multiplied by log2(e), exp2 instead of exp).
# One program per (sequence, kv head) takes all the query heads sharing that kv head as the rows
# of one tile, so each K/V block of a GQA cache is read once for its G query heads; the tile is
# padded to >= 16 rows because tl.dot needs M >= 16 on the GPU. K/V slots past a length are
# masked on load (a torch.empty cache may hold NaN there).

_LOG2E = 1.4426950408889634  # also spelled out inside the kernels (globals must be constexpr)


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, out_ptr, pre_out_ptr, pre_lse_ptr,
    qk_scale, G, D,
    stride_qs, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_bts, stride_btb, stride_lens,
    stride_os, stride_oh, stride_ls,
    HAS_PREFIX: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    s = tl.program_id(0)
    hkv = tl.program_id(1)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_g = offs_g < G
    mask_d = offs_d < D
    heads = hkv * G + offs_g  # (BLOCK_G,) query heads reading this kv head
    q = tl.load(
        q_ptr + s * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_g[:, None] & mask_d[None, :], other=0.0,
    )  # (BLOCK_G, BLOCK_D)
    L = tl.load(lens_ptr + s * stride_lens).to(tl.int32)
    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):  # BLOCK_N tokens = BLOCK_N / BLOCK_SIZE cache blocks a trip
        tok = n0 + offs_n  # (BLOCK_N,)
        valid = tok < L
        blk = tl.load(bt_ptr + s * stride_bts + (tok // BLOCK_SIZE) * stride_btb, mask=valid, other=0).to(tl.int64)
        slot = tok % BLOCK_SIZE
        kv_mask = valid[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + (blk * stride_kb + slot * stride_kt + hkv * stride_kh)[:, None] + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptr + (blk * stride_vb + slot * stride_vt + hkv * stride_vh)[:, None] + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_G, BLOCK_N)
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, axis=1))  # finite: token n0 of every trip is valid
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new
    o_offs = s * stride_os + heads[:, None] * stride_oh + offs_d[None, :]
    o_mask = mask_g[:, None] & mask_d[None, :]
    safe_l = tl.where(l > 0, l, 1.0)
    if HAS_PREFIX:  # log-sum-exp merge with this sequence's prefix partial (natural-log lse)
        lse_p = tl.load(pre_lse_ptr + s * stride_ls + heads, mask=mask_g, other=float("-inf")) * 1.4426950408889634
        out_p = tl.load(pre_out_ptr + o_offs, mask=o_mask, other=0.0)
        lse_s = m + tl.log2(safe_l)
        lse_s = tl.where(l > 0, lse_s, float("-inf"))
        top = tl.maximum(lse_p, lse_s)
        top = tl.where(top == float("-inf"), 0.0, top)
        w_p = tl.exp2(lse_p - top)
        w_s = tl.exp2(lse_s - top)
        den = w_p + w_s  # > 0 for every real row (the checks demand one token); padding rows: 0
        den = tl.where(den > 0, den, 1.0)
        out = (out_p * w_p[:, None] + (acc / safe_l[:, None]) * w_s[:, None]) / den[:, None]
    else:
        out = acc / safe_l[:, None]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _prefix_attention_kernel(
    q_ptr, k_ptr, v_ptr, pt_ptr, plens_ptr, members_ptr, group_off_ptr, out_ptr, lse_ptr,
    qk_scale, G, D,
    stride_qs, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ptg, stride_ptb, stride_plens,
    stride_os, stride_oh, stride_ls,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, GP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Program (group, kv head, chunk of BLOCK_M members): rows = members x query heads, so each
    prefix K/V block is loaded once and multiplied against BLOCK_M * GP query rows."""
    g = tl.program_id(0)
    hkv = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    start = tl.load(group_off_ptr + g)
    count = tl.load(group_off_ptr + g + 1) - start
    if m0 < count:
        offs_r = tl.arange(0, BLOCK_M * GP)  # (R,) row = member * GP + head-in-group
        mi = offs_r // GP
        gi = offs_r % GP
        row_ok = (m0 + mi < count) & (gi < G)
        seq = tl.load(members_ptr + start + m0 + mi, mask=row_ok, other=0).to(tl.int64)
        heads = hkv * G + gi
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        mask_d = offs_d < D
        q = tl.load(q_ptr + seq[:, None] * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None] & mask_d[None, :], other=0.0)  # (R, BLOCK_D)
        L = tl.load(plens_ptr + g * stride_plens).to(tl.int32)
        m = tl.full((BLOCK_M * GP,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_M * GP,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M * GP, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, L, BLOCK_N):
            tok = n0 + offs_n  # (BLOCK_N,)
            valid = tok < L
            blk = tl.load(pt_ptr + g * stride_ptg + (tok // BLOCK_SIZE) * stride_ptb, mask=valid, other=0).to(tl.int64)
            slot = tok % BLOCK_SIZE
            kv_mask = valid[:, None] & mask_d[None, :]
            k = tl.load(k_ptr + (blk * stride_kb + slot * stride_kt + hkv * stride_kh)[:, None] + offs_d[None, :],
                        mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D), shared by all R rows
            v = tl.load(v_ptr + (blk * stride_vb + slot * stride_vt + hkv * stride_vh)[:, None] + offs_d[None, :],
                        mask=kv_mask, other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (R, BLOCK_N)
            qk = tl.where(valid[None, :], qk, float("-inf"))
            m_new = tl.maximum(m, tl.max(qk, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m = m_new
        safe_l = tl.where(l > 0, l, 1.0)
        lse = tl.where(l > 0, (m + tl.log2(safe_l)) * 0.6931471805599453, float("-inf"))
        tl.store(out_ptr + seq[:, None] * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
                 acc / safe_l[:, None], mask=row_ok[:, None] & mask_d[None, :])
        tl.store(lse_ptr + seq * stride_ls + heads, lse, mask=row_ok)


def _check_layout(op: str, kernel: object, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """What the kernels assume beyond the shared argument checks."""
    check_launchable(op, kernel, q, k_cache, v_cache)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{op}: Triton supports float16, bfloat16 and float32, got {q.dtype}")
    D = q.shape[-1]
    if D > 1 and (q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1):
        raise ValueError(
            f"{op}: q, k_cache and v_cache must be contiguous along head_dim (last stride 1), got "
            f"q {q.stride()}, k {k_cache.stride()}, v {v_cache.stride()}"
        )
    # any block size works: a KV trip gathers BLOCK_N (>= 16, for tl.dot) tokens through the
    # block table whatever the block size, so blocks of 1, 12 or 48 tokens are fine
    if D > 256:
        raise ValueError(f"{op}: Triton supports head_dim <= 256, got {D}")


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 caches get exact fp32 products (the default, tf32, keeps a 10-bit mantissa: ~1e-3
    # relative error against the fp32 reference); for fp16/bf16 operands the setting is moot
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_g(G: int) -> int:
    return max(16, next_pow2(G))


GPU_BLOCK_N = 64  # KV tokens a loop trip on the GPU for 16-bit caches; see _block_n


def _block_n(lens: torch.Tensor | None, kernel: object, dtype: torch.dtype) -> int:
    """KV tokens per loop trip (a trip may span several cache blocks or part of one).

    Interpreter: up to 256, since it pays per trip (~60 Triton ops at ~0.1 ms each), not per
    element. GPU, from ptxas for sm_90 (tests/test_kernels_compile.py): 64-token trips keep
    16-bit kernels at 99-150 registers without spills; fp32 (exact FMA dots) spills at 64
    (up to 14 KB in the prefix kernel) and not at 16. The trip length has not been timed on a
    GPU (none was available to this work); benchmarks/kernels.py is the check.
    """
    if is_interpreted(kernel):
        assert lens is not None
        return max(16, min(next_pow2(int(lens.max())), 256))  # a host sync; the GPU path has none
    if dtype == torch.float32:
        return 16
    return GPU_BLOCK_N


def _prefix_config(G: int, max_members: int, D: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(GP, BLOCK_M, num_warps) of the prefix kernel: BLOCK_M members x GP query heads = up to
    64 query rows a tile (32 for fp32), at least 16 for tl.dot. From ptxas for sm_90
    (tests/test_kernels_compile.py): 64 rows x D=128 fp16 take 228 registers a thread at 4 warps,
    113 at 8; 64 rows x D=64 fp32 spill 712 bytes at 4 warps; 64 rows x D=128 fp32 spill 600
    bytes even at 8 warps, so fp32 tiles stop at 32 rows. 8 warps from 64 x 64 elements up."""
    GP = next_pow2(G)
    rows = 32 if dtype == torch.float32 else 64
    block_m = max(16 // GP, min(next_pow2(max_members), max(rows // GP, 1)))
    warps = 8 if block_m * GP * next_pow2(D) >= 4096 else 4
    return GP, block_m, warps


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Same contract as :func:`paged_attention_reference`: one launch over (S, H_kv)."""
    check_paged_attention_args(q, k_cache, v_cache, block_tables, seq_lens, values=validate)
    _check_layout("paged_attention", _paged_attention_kernel, q, k_cache, v_cache)
    S, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty((S, Hq, D), dtype=q.dtype, device=q.device)
    if S == 0:
        return out
    _launch_paged(q, k_cache, v_cache, block_tables, seq_lens, out, None, None, scale)
    return out


def _launch_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    out: torch.Tensor,
    pre_out: torch.Tensor | None,
    pre_lse: torch.Tensor | None,
    scale: float,
) -> None:
    S, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    G = Hq // Hkv
    has_prefix = pre_out is not None
    _paged_attention_kernel[(S, Hkv)](
        q, k_cache, v_cache, tables, lens, out,
        pre_out if has_prefix else out, pre_lse if has_prefix else out,
        scale * _LOG2E, G, D,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        tables.stride(0), tables.stride(1), lens.stride(0),
        out.stride(0), out.stride(1), Hq,
        HAS_PREFIX=has_prefix, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_N=_block_n(lens, _paged_attention_kernel, q.dtype),
        BLOCK_G=_block_g(G), BLOCK_D=max(16, next_pow2(D)),
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=4,
    )


def shared_prefix_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    seq_group: torch.Tensor,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
    scale: float | None = None,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Same contract as :func:`shared_prefix_attention_reference`, in two launches: the prefix
    kernel over (group, H_kv, member chunk) writes fp32 partials (out, lse) per sequence; the
    paged kernel then attends each sequence's suffix and merges the partial in its epilogue."""
    check_shared_prefix_args(
        q, k_cache, v_cache, prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens, values=validate
    )
    _check_layout("shared_prefix_attention", _prefix_attention_kernel, q, k_cache, v_cache)
    S, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    G = Hq // Hkv
    Gn = prefix_tables.shape[0]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty((S, Hq, D), dtype=q.dtype, device=q.device)
    if S == 0:
        return out
    grp = seq_group.long()
    counts = torch.bincount(grp, minlength=Gn)  # (Gn,)
    group_off = torch.zeros(Gn + 1, dtype=torch.long, device=q.device)
    torch.cumsum(counts, 0, out=group_off[1:])
    members = torch.argsort(grp, stable=True)  # (S,) sequences listed group by group
    max_members = int(counts.max())  # the grid needs it: this path's one host sync when not validating
    GP, block_m, warps = _prefix_config(G, max_members, D, q.dtype)
    pre_out = torch.empty((S, Hq, D), dtype=torch.float32, device=q.device)
    pre_lse = torch.empty((S, Hq), dtype=torch.float32, device=q.device)
    grid = (Gn, Hkv, triton.cdiv(max_members, block_m))
    _prefix_attention_kernel[grid](
        q, k_cache, v_cache, prefix_tables, prefix_lens, members, group_off, pre_out, pre_lse,
        scale * _LOG2E, G, D,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        prefix_tables.stride(0), prefix_tables.stride(1), prefix_lens.stride(0),
        pre_out.stride(0), pre_out.stride(1), Hq,
        BLOCK_SIZE=k_cache.shape[1], BLOCK_N=_block_n(prefix_lens, _prefix_attention_kernel, q.dtype),
        GP=GP, BLOCK_M=block_m, BLOCK_D=max(16, next_pow2(D)),
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=warps,
    )
    _launch_paged(q, k_cache, v_cache, suffix_tables, suffix_lens, out, pre_out, pre_lse, scale)
    return out
