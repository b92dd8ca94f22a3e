"""Segmented top-k beam pruning: for each question (a segment of one flat score array), keep its
k best candidates in descending score order, ties to the lower index, with their parents.

Shapes: scores (C,) float; offsets (Q+1,) int64 segment bounds (non-decreasing, offsets[0]=0,
offsets[Q]=C); k (Q,) int64 per-question keep count (>= 0); parents (C,) int64.
Returns (kept (K,) int64 global candidate indices, kept_parents (K,) int64,
out_offsets (Q+1,) int64) with K = sum(min(k_q, len_q)).
"""

from __future__ import annotations

import torch


def check_topk_prune_args(
    scores: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, parents: torch.Tensor
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
    off = offsets.cpu()
    if int(off[0]) != 0 or int(off[-1]) != scores.numel() or bool((off[1:] < off[:-1]).any()):
        raise ValueError("topk_prune: offsets must start at 0, end at len(scores) and never decrease")
    if bool((k < 0).any()):
        raise ValueError("topk_prune: k must be >= 0")


def topk_prune_reference(
    scores: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, parents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_topk_prune_args(scores, offsets, k, parents)
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
