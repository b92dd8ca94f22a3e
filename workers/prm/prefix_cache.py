"""Incremental forward of a decoder over per-node KV caches (the separate PRM's prefix cache).

Each scored node keeps the KV of everything the PRM has read up to it (question and steps), so
scoring a child runs only the child's new tokens on top of its parent's cache. Rows of one call
may extend caches of different lengths: the cached prefixes are left-padded to a common length
and the new tokens right-padded, with an attention mask over both and explicit positions, so one
transformers forward serves the whole batch::

    past (padded)        new tokens
    [0 0 k k k k k k] [t t t t p p]     row with 6 cached and 4 new tokens
    [k k k k k k k k] [t t p p p p]     row with 8 cached and 2 new tokens

The keys and values a row should keep are sliced out and copied (``clone``) so the batch's
padded tensors are freed after the call. This runs on transformers' own forward until the
paged-KV engine exposes a forward over reference-counted blocks (see docs/strategies.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PrefixState:
    """What the PRM has read along a path: per layer (keys, values), each (H_kv, T, D)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[1]) if self.layers else 0


@dataclass
class Row:
    past: PrefixState | None  # cache to extend (None: start from nothing)
    new_ids: list[int]  # tokens to run (>= 1)
    keep: int  # how many of new_ids join the returned cache (a scoring suffix is left out)


class IncrementalDecoder:
    """Runs ``decoder`` (a transformers base model: embeddings → layers → final norm) over
    cached prefixes plus new tokens."""

    def __init__(self, decoder: Any, pad_id: int = 0) -> None:
        self.decoder = decoder
        self.pad_id = pad_id

    @torch.inference_mode()
    def run(self, rows: list[Row]) -> tuple[torch.Tensor, list[PrefixState]]:
        """Returns hidden states (B, N_max, D) of the new tokens (row b's valid part is
        ``[:len(new_ids)]``) and each row's extended cache."""
        from transformers import DynamicCache

        if not rows:
            raise ValueError("IncrementalDecoder.run needs at least one row")
        if any(not r.new_ids or not 0 <= r.keep <= len(r.new_ids) for r in rows):
            raise ValueError("every row needs >= 1 new token and 0 <= keep <= len(new_ids)")
        B = len(rows)
        past_lens = [r.past.length if r.past is not None else 0 for r in rows]
        new_lens = [len(r.new_ids) for r in rows]
        L, N = max(past_lens), max(new_lens)
        ids = torch.full((B, N), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L + N), dtype=torch.long)
        pos = torch.zeros((B, N), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : new_lens[b]] = torch.tensor(r.new_ids, dtype=torch.long)
            mask[b, L - past_lens[b] : L + new_lens[b]] = 1
            pos[b] = past_lens[b] + torch.arange(N)  # pads continue the count; they are masked
        cache = DynamicCache()
        if L > 0:
            template = next(r.past for r in rows if r.past is not None and r.past.length > 0)
            for layer, (k0, v0) in enumerate(template.layers):
                H, _, D = k0.shape
                k = k0.new_zeros((B, H, L, D))  # (B, H_kv, L, D), left-padded
                v = v0.new_zeros((B, H, L, D))
                for b, r in enumerate(rows):
                    if past_lens[b]:
                        pk, pv = r.past.layers[layer]  # type: ignore[union-attr]
                        k[b, :, L - past_lens[b] :] = pk
                        v[b, :, L - past_lens[b] :] = pv
                cache.update(k, v, layer)
        dev = next(self.decoder.parameters()).device  # built on the CPU, run where the model is
        out = self.decoder(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
            past_key_values=cache, use_cache=True,
        )
        hidden = out.last_hidden_state  # (B, N, D)
        kv = out.past_key_values
        states: list[PrefixState] = []
        for b, r in enumerate(rows):
            lo, hi = L - past_lens[b], L + r.keep
            layers = [
                (layer.keys[b, :, lo:hi].clone(), layer.values[b, :, lo:hi].clone()) for layer in kv.layers
            ]
            states.append(PrefixState(layers))
        return hidden, states
