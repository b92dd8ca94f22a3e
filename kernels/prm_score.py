"""Fused PRM scoring: gather each beam's step-end hidden state, apply the head, squash, and
fold the step score into the beam's running aggregate — one pass over the rows.

Shapes: hidden (R, D) packed rows just computed; rows (B,) int64 row of each beam's step end;
head (D,) for a sigmoid head or (2, D) for a "+"/"−" pair (logit = h·head[0] − h·head[1]);
prev_agg (B,) float32 running aggregate; n_prev (B,) int32 steps already folded in.
Returns (scores (B,), aggregates (B,)) in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ponder.kernels.dispatch import check_launchable, is_interpreted, next_pow2

MODES = ("last", "min", "prod", "mean")


def check_prm_score_args(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    prev_agg: torch.Tensor,
    n_prev: torch.Tensor,
    mode: str,
    values: bool = True,
) -> None:
    """Raise ValueError with a clear message on any shape, dtype or mode mismatch; with
    ``values`` also on row ids outside hidden (a device sync)."""
    if mode not in MODES:
        raise ValueError(f"prm_score: mode must be one of {MODES}, got {mode!r}")
    if hidden.dim() != 2:
        raise ValueError(f"prm_score: hidden must be (R, D), got shape {tuple(hidden.shape)}")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"prm_score: hidden must be a float tensor, got {hidden.dtype}")
    R, D = hidden.shape
    if head.dim() not in (1, 2) or head.shape[-1] != D or (head.dim() == 2 and head.shape[0] != 2):
        raise ValueError(f"prm_score: head must be (D,) or (2, D) with D={D}, got {tuple(head.shape)}")
    if not head.is_floating_point():
        raise ValueError(f"prm_score: head must be a float tensor, got {head.dtype}")
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
    if B and values:
        lo, hi = (int(x) for x in torch.aminmax(rows))
        if lo < 0 or hi >= R:
            raise ValueError(f"prm_score: rows must index hidden's {R} rows, got values in [{lo}, {hi}]")


def prm_score_reference(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    prev_agg: torch.Tensor,
    n_prev: torch.Tensor,
    mode: str = "last",
    bias: float = 0.0,
    *,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_prm_score_args(hidden, rows, head, prev_agg, n_prev, mode, values=validate)
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


# ----------------------------------------------------------------------------------------------
# Triton: one launch, one program per BLOCK_B beams. Each program gathers its beams' step-end
# rows in (BLOCK_B, BLOCK_D) tiles straight from the packed hidden states (no index_select copy),
# dots them with the head in fp32, squashes, and folds the score into the running aggregate.

_MODE_CODE = {m: i for i, m in enumerate(MODES)}


@triton.jit
def _prm_score_kernel(
    hidden_ptr, rows_ptr, head_ptr, prev_ptr, nprev_ptr, score_ptr, agg_ptr,
    B, D, stride_hidden, stride_rows, stride_head, stride_prev, stride_nprev, bias,
    TWO_ROW: tl.constexpr, MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    mask_b = offs_b < B
    rows = tl.load(rows_ptr + offs_b * stride_rows, mask=mask_b, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        mask_d = offs_d < D
        h = tl.load(
            hidden_ptr + rows[:, None] * stride_hidden + offs_d[None, :],
            mask=mask_b[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)  # (BLOCK_B, BLOCK_D)
        w = tl.load(head_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)  # (BLOCK_D,)
        if TWO_ROW:  # "+" row minus "-" row: the logit of a two-token PRM head
            w = w - tl.load(head_ptr + stride_head + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        acc += h * w[None, :]
    logit = tl.sum(acc, axis=1) + bias  # (BLOCK_B,)
    e = tl.exp(-tl.abs(logit))  # in (0, 1]: no overflow for large |logit|
    score = tl.where(logit >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    prev = tl.load(prev_ptr + offs_b * stride_prev, mask=mask_b, other=0.0)
    n = tl.load(nprev_ptr + offs_b * stride_nprev, mask=mask_b, other=0)
    first = n <= 0
    if MODE == 0:  # last
        agg = score
    elif MODE == 1:  # min
        agg = tl.where(first, score, tl.minimum(prev, score))
    elif MODE == 2:  # prod
        agg = tl.where(first, score, prev * score)
    else:  # mean over the n + 1 steps scored so far
        nf = n.to(tl.float32)
        agg = tl.where(first, score, (prev * nf + score) / (nf + 1.0))
    tl.store(score_ptr + offs_b, score, mask=mask_b)
    tl.store(agg_ptr + offs_b, agg, mask=mask_b)


def prm_score_triton(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    prev_agg: torch.Tensor,
    n_prev: torch.Tensor,
    mode: str = "last",
    bias: float = 0.0,
    *,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`prm_score_reference`, fused into one Triton launch."""
    check_prm_score_args(hidden, rows, head, prev_agg, n_prev, mode, values=validate)
    check_launchable("prm_score", _prm_score_kernel, hidden, rows, head, prev_agg, n_prev)
    if hidden.stride(1) != 1 and hidden.shape[1] > 1:
        raise ValueError(f"prm_score: hidden must be contiguous along D (stride(1) == 1), got strides {hidden.stride()}")
    if head.stride(-1) != 1 and head.shape[-1] > 1:
        raise ValueError(f"prm_score: head must be contiguous along D (stride(-1) == 1), got strides {head.stride()}")
    B, D = rows.shape[0], hidden.shape[1]
    scores = torch.empty(B, dtype=torch.float32, device=hidden.device)
    aggs = torch.empty(B, dtype=torch.float32, device=hidden.device)
    if B == 0:
        return scores, aggs
    if is_interpreted(_prm_score_kernel):
        # the interpreter pays ~1 ms per program and per loop trip, not per element: big tiles
        block_b, block_d = min(next_pow2(B), 64), min(next_pow2(D), 1024)
    else:
        # 16 beams x 256 features = 4096 fp32 accumulators, 32 per thread at 4 warps
        block_b, block_d = 16, min(next_pow2(D), 256)
    two_row = head.dim() == 2
    _prm_score_kernel[(triton.cdiv(B, block_b),)](
        hidden, rows, head, prev_agg, n_prev, scores, aggs,
        B, D, hidden.stride(0), rows.stride(0), head.stride(0) if two_row else 0,
        prev_agg.stride(0), n_prev.stride(0), float(bias),
        TWO_ROW=two_row, MODE=_MODE_CODE[mode], BLOCK_B=block_b, BLOCK_D=block_d,
    )
    return scores, aggs
