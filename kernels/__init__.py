"""Kernels for the hot paths of batched tree search, each beside its PyTorch reference.

Call the ops through this module: they dispatch to Triton or to the reference (see
:mod:`ponder.kernels.dispatch`).
"""

from ponder.kernels.ops import paged_attention, prm_score, shared_prefix_attention, topk_prune

__all__ = ["paged_attention", "prm_score", "shared_prefix_attention", "topk_prune"]
