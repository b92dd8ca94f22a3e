"""Segmented top-k beam pruning: for each question (a segment of one flat score array), keep its
k best candidates in descending score order, ties to the lower index, with their parents.

Shapes: scores (C,) float; offsets (Q+1,) int64 segment bounds (non-decreasing, offsets[0]=0,
offsets[Q]=C); k (Q,) int64 per-question keep count (>= 0); parents (C,) int64.
Returns (kept (K,) int64 global candidate indices, kept_parents (K,) int64,
out_offsets (Q+1,) int64) with K = sum(min(k_q, len_q)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ponder.kernels.dispatch import check_launchable, is_interpreted, next_pow2


def check_topk_prune_args(
    scores: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, parents: torch.Tensor, values: bool = True
) -> None:
    if scores.dim() != 1 or not scores.is_floating_point():
        raise ValueError(f"topk_prune: scores must be a 1-D float tensor, got {scores.dtype} {tuple(scores.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_prune: offsets must be a 1-D integer tensor of Q+1 bounds, got {tuple(offsets.shape)}")
    Q = offsets.numel() - 1
    if k.shape != (Q,) or k.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_prune: k must be an integer tensor of shape ({Q},), got {k.dtype} {tuple(k.shape)}")
    if parents.shape != scores.shape or parents.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_prune: parents must be integers shaped like scores {tuple(scores.shape)}, got {tuple(parents.shape)}")
    devices = {t.device for t in (scores, offsets, k, parents)}
    if len(devices) != 1:
        raise ValueError(f"topk_prune: all tensors must be on one device, got {devices}")
    if not values:
        return
    off = offsets.cpu()
    if int(off[0]) != 0 or int(off[-1]) != scores.numel() or bool((off[1:] < off[:-1]).any()):
        raise ValueError("topk_prune: offsets must start at 0, end at len(scores) and never decrease")
    if bool((k < 0).any()):
        raise ValueError("topk_prune: k must be >= 0")


def topk_prune_reference(
    scores: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, parents: torch.Tensor, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_topk_prune_args(scores, offsets, k, parents, values=validate)
    off = offsets.long().tolist()
    ks = k.long().tolist()
    kept: list[torch.Tensor] = []
    counts = [0]
    for q in range(len(ks)):
        lo, hi = off[q], off[q + 1]
        n = min(ks[q], hi - lo)
        if n > 0:
            seg = scores[lo:hi].float()
            # stable sort on -score keeps the lower index first among equal scores
            order = torch.sort(-seg, stable=True).indices[:n]
            kept.append(order + lo)
        counts.append(counts[-1] + n)
    idx = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long, device=scores.device)
    idx = idx.to(device=scores.device, dtype=torch.long)
    out_offsets = torch.tensor(counts, dtype=torch.long, device=scores.device)
    return idx, parents.long().index_select(0, idx), out_offsets


# ----------------------------------------------------------------------------------------------
# Triton: rank by counting. Candidate i of a segment lands at position
#   rank(i) = #{j in segment : j beats i},  j beats i  <=>  s_j > s_i, or s_j == s_i and j < i
# (NaN loses to every number and ties among NaNs go to the lower index, as torch.sort does).
# Ranks are a permutation of 0..n-1, so every kept candidate is written by exactly one program,
# with no sort, no atomics and no second pass: one launch over (question, block of candidates).
# The O(n^2) comparisons per segment are cheap at beam-search sizes (n <= a few thousand).


@triton.jit
def _topk_prune_kernel(
    scores_ptr, offsets_ptr, k_ptr, parents_ptr, out_offsets_ptr, kept_ptr, kept_parents_ptr,
    stride_scores, stride_k, stride_parents,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
):
    q = tl.program_id(0)
    lo = tl.load(offsets_ptr + q).to(tl.int64)
    n = tl.load(offsets_ptr + q + 1).to(tl.int64) - lo
    kq = tl.minimum(tl.load(k_ptr + q * stride_k).to(tl.int64), n)
    i0 = tl.program_id(1) * BLOCK_I
    if (i0 < n) & (kq > 0):
        offs_i = i0 + tl.arange(0, BLOCK_I)  # (BLOCK_I,) index within the segment
        mask_i = offs_i < n
        s_i = tl.load(scores_ptr + (lo + offs_i) * stride_scores, mask=mask_i, other=0.0).to(tl.float32)
        nan_i = s_i != s_i
        rank = tl.zeros((BLOCK_I,), dtype=tl.int32)
        for j0 in range(0, n, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)  # (BLOCK_J,)
            mask_j = offs_j < n
            s_j = tl.load(scores_ptr + (lo + offs_j) * stride_scores, mask=mask_j, other=0.0).to(tl.float32)
            nan_j = s_j != s_j
            a = s_i[:, None]
            b = s_j[None, :]
            lower = offs_j[None, :] < offs_i[:, None]  # (BLOCK_I, BLOCK_J)
            beats_num = (~nan_j[None, :]) & ((b > a) | ((b == a) & lower))
            beats_nan = (~nan_j[None, :]) | lower
            beats = tl.where(nan_i[:, None], beats_nan, beats_num) & mask_j[None, :]
            rank += tl.sum(beats.to(tl.int32), axis=1)
        keep = mask_i & (rank < kq)
        dst = tl.load(out_offsets_ptr + q) + rank
        par = tl.load(parents_ptr + (lo + offs_i) * stride_parents, mask=keep, other=0).to(tl.int64)
        tl.store(kept_ptr + dst, lo + offs_i, mask=keep)
        tl.store(kept_parents_ptr + dst, par, mask=keep)


def topk_prune_triton(
    scores: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, parents: torch.Tensor, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`topk_prune_reference`, one Triton launch for all questions."""
    check_topk_prune_args(scores, offsets, k, parents, values=validate)
    check_launchable("topk_prune", _topk_prune_kernel, scores, offsets, k, parents)
    if offsets.stride(0) != 1 and offsets.numel() > 1:
        raise ValueError(f"topk_prune: offsets must be contiguous, got stride {offsets.stride(0)}")
    dev = scores.device
    lens = (offsets[1:] - offsets[:-1]).long()  # (Q,)
    counts = torch.minimum(k.long(), lens)
    out_offsets = torch.zeros(lens.numel() + 1, dtype=torch.long, device=dev)
    torch.cumsum(counts, 0, out=out_offsets[1:])
    # one host sync for the output size and the grid, as the reference needs too
    K, max_len = (int(x) for x in torch.stack([out_offsets[-1], lens.max() if lens.numel() else out_offsets[0]]).tolist())
    kept = torch.empty(K, dtype=torch.long, device=dev)
    kept_parents = torch.empty(K, dtype=torch.long, device=dev)
    if K == 0:
        return kept, kept_parents, out_offsets
    if is_interpreted(_topk_prune_kernel):
        block_i = block_j = min(next_pow2(max_len), 256)  # few, large programs in the interpreter
    else:
        block_i, block_j = 64, 64  # a (64, 64) comparison tile: 32 values per thread at 4 warps
    grid = (lens.numel(), triton.cdiv(max_len, block_i))
    _topk_prune_kernel[grid](
        scores, offsets, k, parents, out_offsets, kept, kept_parents,
        scores.stride(0), k.stride(0), parents.stride(0),
        BLOCK_I=block_i, BLOCK_J=block_j,
    )
    return kept, kept_parents, out_offsets
