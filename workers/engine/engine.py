"""The engine: one model's weights, its paged KV pool, prefill with prefix reuse, and the
batched one-token decode step that the step loop (:mod:`ponder.workers.engine.decode`) drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.engine.attention import DecodeAttention
from ponder.workers.engine.config import EngineConfig
from ponder.workers.engine.kv_cache import BlockPool, CacheStats, Sequence
from ponder.workers.engine.model import EngineModel


@dataclass
class Prefilled:
    seq: Sequence
    computed_tokens: int  # run through the model now
    reused_tokens: int  # served from the prefix index


class Engine:
    def __init__(self, hf_model: Any, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        c = self.config
        self.model = EngineModel(hf_model, dtype=c.dtype, device=c.device)
        m = self.model
        self.pool = BlockPool(
            m.n_layers, m.n_kv_heads, m.head_dim, c.block_size, c.max_kv_bytes, dtype=c.dtype, device=c.device
        )
        self.device = m.device

    @property
    def context_limit(self) -> int:
        m = self.model
        return min(m.max_positions, m.sliding_window or m.max_positions)

    def stats(self) -> CacheStats:
        return self.pool.stats()

    # -- sequences --------------------------------------------------------------------------

    def fork(self, seq: Sequence) -> Sequence:
        return self.pool.fork(seq)

    def release(self, seq: Sequence) -> None:
        self.pool.release(seq)

    def prefill(self, tokens: list[int], *, use_index: bool = True) -> Prefilled:
        """A sequence holding ``tokens``: the longest indexed prefix is reused, the rest is run
        in chunks of ``prefill_chunk`` tokens. On error nothing stays referenced."""
        if not tokens:
            raise InvalidArgument("prompt", "encodes to no tokens")
        self.model.check_positions(len(tokens))
        if any(t < 0 or t >= self.model.vocab_size for t in tokens):
            raise InvalidArgument("prompt", f"token ids must be in [0, {self.model.vocab_size})")
        seq = self.pool.lookup(tokens) if use_index else Sequence()
        reused = seq.length
        try:
            self._extend(seq, tokens[reused:])
        except BaseException:
            self.pool.release(seq)
            raise
        return Prefilled(seq, len(tokens) - reused, reused)

    def _extend(self, seq: Sequence, tokens: list[int]) -> torch.Tensor | None:
        """Run ``tokens`` after ``seq``'s cached ones; returns their hidden states (T, D)."""
        outs = []
        chunk = self.config.prefill_chunk
        for i in range(0, len(tokens), chunk):
            part = tokens[i : i + chunk]
            start = seq.length
            self.pool.prepare_append([seq], [len(part)])
            slots = self.pool.slots(seq, 0, start + len(part))
            hidden = self.model.extend(self.pool, part, start, slots)  # (T, D)
            self.pool.commit(seq, part, hidden)
            seq.hidden = hidden[-1].clone()
            outs.append(hidden)
        return torch.cat(outs) if outs else None

    @torch.inference_mode()
    def forward_logits(self, tokens: list[int], *, split: int | None = None) -> torch.Tensor:
        """Logits (T, V) float32 of every position of ``tokens`` on a fresh sequence (no prefix
        reuse; released at the end): the first ``split`` tokens by prefill, the rest one at a
        time by decode steps. For the equivalence tests."""
        split = len(tokens) if split is None else split
        assert 1 <= split <= len(tokens)
        seq = Sequence()
        try:
            first = self._extend(seq, tokens[:split])
            assert first is not None  # split >= 1 tokens
            rows = [first]
            for t in tokens[split:]:
                rows.append(self.decode_step([seq], torch.tensor([t], device=self.device)))
            return self.model.logits(torch.cat(rows))
        finally:
            self.pool.release(seq)

    # -- decoding ---------------------------------------------------------------------------

    def decode_step(self, seqs: list[Sequence], tokens: torch.Tensor) -> torch.Tensor:
        """Append one token to each sequence (B rows, ``tokens`` (B,) int64) and run it;
        returns the final-normed hidden states (B, D). Raises KVCacheExhausted before any
        change when blocks run out."""
        pool = self.pool
        bs = pool.block_size
        B = len(seqs)
        pool.prepare_append(seqs, [1] * B)
        lengths = [s.length + 1 for s in seqs]
        slots = torch.tensor([s.blocks[s.length // bs] * bs + s.length % bs for s in seqs], device=self.device)
        positions = torch.tensor([s.length for s in seqs], device=self.device)
        c = self.config
        attend = DecodeAttention(seqs, lengths, bs, self.model.scale, self.device, c.shared_prefix, c.attention)
        hidden = self.model.decode(pool, tokens, positions, slots, attend)  # (B, D)
        toks = tokens.tolist()
        for i, s in enumerate(seqs):
            if (s.length + 1) % bs:
                s.tokens.append(toks[i])  # the common case: no block filled, nothing to index
            else:
                pool.commit(s, [toks[i]], hidden[i : i + 1])
        return hidden
