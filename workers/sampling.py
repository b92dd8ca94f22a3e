"""Batched next-token sampling with one seed per row, and step-end detection on decoded text.

Every row draws its randomness from its own counter-based stream (its seed and how many tokens
it has drawn), so a row's text does not depend on what else is in the batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from ponder.workers.types import SamplingParams


class RowRandom:
    """One uniform number per sampled token, reproducible from the row's seed."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def next(self) -> float:
        return self._rng.random()


def sample_next(
    logits: torch.Tensor, params: Sequence[SamplingParams], uniforms: Sequence[float]
) -> torch.Tensor:
    """Sample one token per row. ``logits``: (B, V); returns (B,) int64.

    Inverse-CDF sampling with the row's uniform number: one sort only for rows that need
    top-p, no per-row generator calls on the hot path. Without top-p, over a large vocabulary,
    the CDF is never formed over the whole of it: the uniform picks a block of
    :data:`CDF_BLOCK` tokens from the blocks' running mass, then a token within it
    (:func:`inverse_cdf`).
    """
    B, V = logits.shape
    dev = logits.device  # every helper tensor lives beside the logits (CPU or GPU)
    out = torch.empty(B, dtype=torch.long, device=dev)
    greedy = torch.tensor([p.temperature == 0.0 for p in params], device=dev)
    if bool(greedy.any()):
        out[greedy] = logits[greedy].float().argmax(dim=-1)
    rows = (~greedy).nonzero().flatten()
    if rows.numel() == 0:
        return out
    picked = rows.tolist()
    sub = logits if len(picked) == B else logits[rows]  # (b, V)
    temps = torch.tensor([params[i].temperature for i in picked], dtype=torch.float32, device=dev).unsqueeze(1)
    z = torch.div(sub.float(), temps)  # a new tensor: the caller's logits are never written
    top_k = torch.tensor([params[i].top_k for i in picked], device=dev)
    if bool((top_k > 0).any()):
        k = torch.where(top_k > 0, top_k.clamp(max=V), torch.full_like(top_k, V))
        kth = z.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))  # (b, 1)
        z.masked_fill_(z < kth, float("-inf"))
    probs = torch.softmax(z, dim=-1)  # (b, V)
    u = torch.tensor([uniforms[i] for i in picked], dtype=torch.float32, device=dev).unsqueeze(1)
    top_p = torch.tensor([params[i].top_p for i in picked], dtype=torch.float32, device=dev)
    if bool((top_p < 1.0).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (cum - sorted_p) >= top_p.unsqueeze(1)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        cdf = sorted_p.cumsum(dim=-1)
        idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=V - 1)
        chosen = order.gather(1, idx).squeeze(1)
    elif V > 4 * CDF_BLOCK:
        chosen = inverse_cdf(probs, u)
    else:  # a small vocabulary (arith's): one cumsum costs less than the two levels' extra ops
        cdf = probs.cumsum(dim=-1)
        chosen = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=V - 1).squeeze(1)
    out[rows] = chosen
    return out


CDF_BLOCK = 256  # tokens per block of the two-level inverse CDF


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each row of ``weights`` (b, V), non-negative with a positive sum, the token whose
    cumulative weight first exceeds ``u`` (b, 1), in [0, 1), times the row's total: the token
    a full ``cumsum`` and ``searchsorted`` would pick (up to float rounding at a boundary), in
    two levels: block sums (one vectorised reduction) and their running total pick a block of
    :data:`CDF_BLOCK` tokens, and a running sum within that block picks the token. On SmolLM2's
    vocabulary at 64 rows, the full cumsum alone took ~9.6 ms a decode step (one thread).
    A token of weight 0 is never returned, whatever the rounding."""
    b, V = weights.shape
    C = CDF_BLOCK
    nc = -(-V // C)
    if nc * C != V:
        weights = torch.nn.functional.pad(weights, (0, nc * C - V))  # zero weight: never picked
    blocks = weights.view(b, nc, C)
    ccdf = blocks.sum(dim=-1).cumsum(dim=-1)  # (b, nc)
    target = u * ccdf[:, -1:]  # < the total: some block's running mass exceeds it
    j = torch.searchsorted(ccdf, target, right=True).clamp(max=nc - 1)  # (b, 1), a block with mass
    before = torch.where(j > 0, ccdf.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(target))
    inner = blocks.gather(1, j.unsqueeze(2).expand(b, 1, C)).squeeze(1)  # (b, C)
    i = torch.searchsorted(inner.cumsum(dim=-1) + before, target, right=True)
    # rounding can leave the target at or past the block's own running sum: its last token with weight
    pos = torch.arange(C, device=weights.device).expand(b, C)
    last = torch.where(inner > 0, pos, torch.full_like(pos, -1)).amax(dim=-1, keepdim=True)
    first = torch.where(inner > 0, pos, torch.full_like(pos, C)).amin(dim=-1, keepdim=True)
    i = torch.maximum(torch.minimum(i, last), first)
    return (j * C + i).squeeze(1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> list[float]:
    """log p(token) per row under the model's own distribution (temperature 1, no top-p/top-k
    truncation): ``logits`` (B, V), ``tokens`` (B,). What the confidence verifier reads; it is
    the same number whatever sampling settings drew the token."""
    logits = logits.float()
    chosen = logits.gather(1, tokens.view(-1, 1).to(logits.device)).squeeze(1)  # (B,)
    return (chosen - torch.logsumexp(logits, dim=-1)).tolist()


def eos_ids(tokenizer: Any, model_config: Any = None) -> set[int]:
    """Every id that ends a solution: the tokenizer's EOS, the generation config's, <|im_end|>."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model_config, "eos_token_id", None)
    if isinstance(gen, int):
        ids.add(gen)
    elif isinstance(gen, (list, tuple)):
        ids.update(int(i) for i in gen)
    for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(special) if special in tokenizer.get_vocab() else None
        if isinstance(tid, int):
            ids.add(tid)
    return ids


class StepStopper:
    """Detects the end of a reasoning step on decoded text, not on token ids: a delimiter that
    tokenises differently mid-sentence than at its end is still found."""

    def __init__(self, tokenizer: Any, delimiter: str) -> None:
        if not delimiter:
            raise ValueError("step delimiter must not be empty")
        self.tokenizer = tokenizer
        self.delimiter = delimiter
        last = delimiter[-1]
        vocab_size = len(tokenizer)
        pieces = tokenizer.batch_decode([[i] for i in range(vocab_size)])
        # Only tokens that can complete the delimiter trigger a decode of the step so far.
        self._may_end = [last in p for p in pieces]  # a list: asked once per sampled token

    def may_end(self, token_id: int) -> bool:
        return 0 <= token_id < len(self._may_end) and self._may_end[token_id]

    def ended(self, step_tokens: list[int]) -> bool:
        """True when the step's text has content followed by the delimiter."""
        if not step_tokens or not self.may_end(step_tokens[-1]):
            return False
        text = self.tokenizer.decode(step_tokens).lstrip()
        return self.delimiter in text
