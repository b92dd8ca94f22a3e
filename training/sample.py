"""Fast batched sampling of whole solutions from an HF causal LM with its KV cache, for the
training jobs (Monte Carlo rollouts, revision data) and the quality report.

This is not the service path (that is a Policy under the SearchLoop, one step per call); it
samples full continuations in one go, which has the same distribution as step-wise sampling at
the same temperature because the step delimiter is itself sampled. Rows are sorted by prompt
length so a batch carries little left padding; the output is in the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ponder.training.checkpoint import EOS_ID, PAD_ID
from ponder.training.fastlm import FastLlama


@torch.inference_mode()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    temperature: float,
    max_new: int,
    seed: int,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    progress: Any = None,
) -> list[list[int]]:
    """Continue every prompt until EOS or ``max_new`` tokens; returns the new tokens (EOS
    included when reached). ``temperature == 0`` is greedy. Reproducible for a given seed,
    prompt list and batch size."""
    fast = model if isinstance(model, FastLlama) else FastLlama(model, dtype)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        for i, toks in zip(rows, _generate_batch(fast, [prompts[i] for i in rows], temperature, max_new, gen)):
            out[i] = toks
        if progress is not None:
            progress.update(len(rows))
    return out


def _generate_batch(
    fast: FastLlama, prompts: list[Sequence[int]], temperature: float, max_new: int, gen: torch.Generator
) -> list[list[int]]:
    B = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((B, width), PAD_ID, dtype=torch.long)
    valid = torch.zeros((B, width + max_new), dtype=torch.bool)
    for j, p in enumerate(prompts):  # left padding: every row's newest token is last
        ids[j, width - len(p) :] = torch.tensor(list(p))
        valid[j, width - len(p) : width] = True
    positions = (valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)
    cache = fast.new_cache(B, width + max_new)
    hidden = fast.forward(ids, positions, cache, 0, valid)[:, -1]  # (B, D)
    next_pos = positions[:, -1] + 1
    rows = torch.arange(B)  # the original row of each live row
    finished = torch.zeros(B, dtype=torch.bool)
    new: list[list[int]] = [[] for _ in range(B)]
    for t in range(max_new):
        logits = fast.logits(hidden)  # (b, V)
        if temperature == 0.0:
            tok = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        for r, x, f in zip(rows.tolist(), tok.tolist(), finished.tolist()):
            if not f:
                new[r].append(x)
        finished |= tok == EOS_ID
        if t == max_new - 1 or bool(finished.all()):
            break
        if int(finished.sum()) * 4 >= len(rows):
            # Drop finished rows once they are a quarter of the batch: compacting on every
            # finish would copy the cache hundreds of times per batch.
            keep = (~finished).nonzero().flatten()
            rows, tok, next_pos, valid = rows[keep], tok[keep], next_pos[keep], valid[keep]
            cache = (cache[0][:, keep], cache[1][:, keep])
            finished = finished[keep]
        slot = width + t
        valid[:, slot] = True
        hidden = fast.forward(tok.unsqueeze(1), next_pos.unsqueeze(1), cache, slot, valid)[:, -1]
        next_pos = next_pos + 1
    return new


@torch.inference_mode()
def step_end_hidden(
    model: Any, sequences: Sequence[Sequence[int]], ends: Sequence[Sequence[int]], batch_size: int = 64
) -> list[torch.Tensor]:
    """The final-norm hidden state at given positions of each sequence, in fp32, from one
    teacher-forced forward per batch: exactly what a policy returns as ``StepOutput.hidden``
    (the state at the step's last token). Returns one (len(ends[i]), D) tensor per sequence."""
    decoder = model.get_decoder()
    out: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in rows)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):  # right padding: positions are the plain 0..T-1
            s = sequences[i]
            ids[j, : len(s)] = torch.tensor(list(s))
            mask[j, : len(s)] = 1
        h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, T, D)
        for j, i in enumerate(rows):
            out[i] = h[j, torch.tensor(list(ends[i]), dtype=torch.long)].clone()
    return out
