"""Fused PRM scoring: gather each beam's step-end hidden state, apply the head, squash, and
fold the step score into the beam's running aggregate — one pass over the rows.

Shapes: hidden (R, D) packed rows just computed; rows (B,) int64 row of each beam's step end;
head (D,) for a sigmoid head or (2, D) for a "+"/"−" pair (logit = h·head[0] − h·head[1]);
prev_agg (B,) float32 running aggregate; n_prev (B,) int32 steps already folded in.
Returns (scores (B,), aggregates (B,)) in float32.
"""

from __future__ import annotations

import torch

MODES = ("last", "min", "prod", "mean")


def check_prm_score_args(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    prev_agg: torch.Tensor,
    n_prev: torch.Tensor,
    mode: str,
) -> None:
    """Raise ValueError with a clear message on any shape, dtype or mode mismatch."""
    if mode not in MODES:
        raise ValueError(f"prm_score: mode must be one of {MODES}, got {mode!r}")
    if hidden.dim() != 2:
        raise ValueError(f"prm_score: hidden must be (R, D), got shape {tuple(hidden.shape)}")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"prm_score: hidden must be a float tensor, got {hidden.dtype}")
    R, D = hidden.shape
    if head.dim() not in (1, 2) or head.shape[-1] != D or (head.dim() == 2 and head.shape[0] != 2):
        raise ValueError(f"prm_score: head must be (D,) or (2, D) with D={D}, got {tuple(head.shape)}")
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"prm_score: rows must be a 1-D integer tensor, got {rows.dtype} {tuple(rows.shape)}")
    B = rows.shape[0]
    if prev_agg.shape != (B,) or n_prev.shape != (B,):
        raise ValueError(
            f"prm_score: prev_agg and n_prev must be ({B},), got {tuple(prev_agg.shape)} and {tuple(n_prev.shape)}"
        )
    if prev_agg.dtype != torch.float32:
        raise ValueError(f"prm_score: prev_agg must be float32, got {prev_agg.dtype}")
    if n_prev.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"prm_score: n_prev must be an integer tensor, got {n_prev.dtype}")
    devices = {t.device for t in (hidden, rows, head, prev_agg, n_prev)}
    if len(devices) != 1:
        raise ValueError(f"prm_score: all tensors must be on one device, got {devices}")
    if B and R == 0:
        raise ValueError("prm_score: rows index into an empty hidden tensor")


def prm_score_reference(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    prev_agg: torch.Tensor,
    n_prev: torch.Tensor,
    mode: str = "last",
    bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_prm_score_args(hidden, rows, head, prev_agg, n_prev, mode)
    h = hidden.index_select(0, rows.long()).float()  # (B, D)
    w = head.float()
    logit = h @ w if w.dim() == 1 else h @ (w[0] - w[1])  # (B,)
    score = torch.sigmoid(logit + bias)
    first = n_prev <= 0
    if mode == "last":
        agg = score
    elif mode == "min":
        agg = torch.where(first, score, torch.minimum(prev_agg, score))
    elif mode == "prod":
        agg = torch.where(first, score, prev_agg * score)
    else:
        n = n_prev.float()
        agg = torch.where(first, score, (prev_agg * n + score) / (n + 1.0))
    return score, agg
