"""Dispatching entry points: each op runs its Triton launcher or its PyTorch reference, chosen
per call by :func:`ponder.kernels.dispatch.use_triton` from the first tensor argument and
``PONDER_KERNELS``. Launcher and reference share one signature and one argument check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ponder.kernels.dispatch import use_triton
from ponder.kernels.paged_attention import (
    paged_attention_reference,
    paged_attention_triton,
    shared_prefix_attention_reference,
    shared_prefix_attention_triton,
)
from ponder.kernels.prm_score import prm_score_reference, prm_score_triton
from ponder.kernels.topk_prune import topk_prune_reference, topk_prune_triton

# name -> Triton launcher (the dispatch table; tests may swap entries to observe dispatch)
TRITON: dict[str, Callable[..., Any]] = {
    "prm_score": prm_score_triton,
    "topk_prune": topk_prune_triton,
    "paged_attention": paged_attention_triton,
    "shared_prefix_attention": shared_prefix_attention_triton,
}

# name -> PyTorch reference
REFERENCE: dict[str, Callable[..., Any]] = {
    "prm_score": prm_score_reference,
    "topk_prune": topk_prune_reference,
    "paged_attention": paged_attention_reference,
    "shared_prefix_attention": shared_prefix_attention_reference,
}


def implementation(name: str, probe: torch.Tensor) -> Callable[..., Any]:
    """The callable that an op named ``name`` runs for a first argument like ``probe``."""
    if use_triton(probe) and name in TRITON:
        return TRITON[name]
    return REFERENCE[name]


def prm_score(hidden: torch.Tensor, *args: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (B,), aggregates (B,)) float32; see :mod:`ponder.kernels.prm_score`."""
    return implementation("prm_score", hidden)(hidden, *args, **kw)


def topk_prune(scores: torch.Tensor, *args: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept (K,), kept_parents (K,), out_offsets (Q+1,)) int64; see :mod:`ponder.kernels.topk_prune`."""
    return implementation("topk_prune", scores)(scores, *args, **kw)


def paged_attention(q: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
    """(S, H_q, D) in q's dtype; see :mod:`ponder.kernels.paged_attention`."""
    return implementation("paged_attention", q)(q, *args, **kw)


def shared_prefix_attention(q: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
    """(S, H_q, D) in q's dtype; see :mod:`ponder.kernels.paged_attention`."""
    return implementation("shared_prefix_attention", q)(q, *args, **kw)
