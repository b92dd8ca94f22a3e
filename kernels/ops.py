"""Dispatching entry points. Until a Triton kernel is registered for an op, its reference runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ponder.kernels.dispatch import use_triton
from ponder.kernels.paged_attention import paged_attention_reference, shared_prefix_attention_reference
from ponder.kernels.prm_score import prm_score_reference
from ponder.kernels.topk_prune import topk_prune_reference

# name -> Triton launcher; filled in by the kernel modules that provide one.
TRITON: dict[str, Callable[..., Any]] = {}


def _pick(name: str, ref: Callable[..., Any], probe: torch.Tensor) -> Callable[..., Any]:
    if use_triton(probe) and name in TRITON:
        return TRITON[name]
    return ref


def prm_score(hidden: torch.Tensor, *args: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return _pick("prm_score", prm_score_reference, hidden)(hidden, *args, **kw)


def topk_prune(scores: torch.Tensor, *args: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _pick("topk_prune", topk_prune_reference, scores)(scores, *args, **kw)


def paged_attention(q: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
    return _pick("paged_attention", paged_attention_reference, q)(q, *args, **kw)


def shared_prefix_attention(q: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
    return _pick("shared_prefix_attention", shared_prefix_attention_reference, q)(q, *args, **kw)
