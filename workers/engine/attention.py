"""Decode attention over the paged cache: the batch's block tables, built once per decode step
and used by every layer, and the call into ``ponder.kernels`` (Triton on CUDA, the PyTorch
reference on the CPU).

With ``shared_prefix`` on, rows are grouped by their first block; a group's common leading
full blocks (the question's prompt for every sample and beam of a question, plus any steps the
whole group shares) are read once for all its rows by ``shared_prefix_attention``, and each
row reads only its own suffix. Rows with no partner go into group 0 with an empty prefix.
"""

from __future__ import annotations

import torch

from ponder import kernels
from ponder.workers.engine.kv_cache import Sequence


def _pad(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(1, max((len(r) for r in rows), default=1))
    out = torch.zeros((len(rows), width), dtype=torch.int32)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return out.to(device)


class DecodeAttention:
    """Callable ``(q (B, H_q, Dh), k_cache, v_cache) -> (B, H_q, Dh)`` for one decode step.

    ``seqs`` must already include this step's token in their blocks (``length + 1`` tokens
    are read: the ``lengths`` given).
    """

    def __init__(
        self,
        seqs: list[Sequence],
        lengths: list[int],
        block_size: int,
        scale: float,
        device: torch.device,
        shared_prefix: bool = True,
    ) -> None:
        self.scale = scale
        self.shared = False
        bs = block_size
        if shared_prefix and len(seqs) > 1:
            by_first: dict[int, list[int]] = {}
            for i, s in enumerate(seqs):
                by_first.setdefault(s.blocks[0], []).append(i)
            prefix_rows: list[list[int]] = [[]]  # group 0: rows without a shared prefix
            prefix_lens = [0]
            group = [0] * len(seqs)
            cut = [0] * len(seqs)  # blocks of each row served by its group's prefix
            for members in by_first.values():
                if len(members) < 2:
                    continue
                first = seqs[members[0]].blocks
                # Only blocks that are full for every member can be shared.
                n = min(lengths[m] // bs for m in members)
                for m in members[1:]:
                    other = seqs[m].blocks
                    j = 0
                    while j < n and other[j] == first[j]:
                        j += 1
                    n = j
                    if n == 0:
                        break
                if n == 0:
                    continue
                g = len(prefix_rows)
                prefix_rows.append(first[:n])
                prefix_lens.append(n * bs)
                for m in members:
                    group[m], cut[m] = g, n
            if len(prefix_rows) > 1:
                self.shared = True
                self.prefix_tables = _pad(prefix_rows, device)  # (G, nb)
                self.prefix_lens = torch.tensor(prefix_lens, dtype=torch.int32, device=device)
                self.seq_group = torch.tensor(group, dtype=torch.int32, device=device)
                self.suffix_tables = _pad([s.blocks[c:] for s, c in zip(seqs, cut)], device)
                self.suffix_lens = torch.tensor(
                    [n - c * bs for n, c in zip(lengths, cut)], dtype=torch.int32, device=device
                )
                return
        self.block_tables = _pad([s.blocks for s in seqs], device)  # (B, nb)
        self.seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return kernels.shared_prefix_attention(
                q, k_cache, v_cache, self.prefix_tables, self.prefix_lens, self.seq_group,
                self.suffix_tables, self.suffix_lens, scale=self.scale,
            )
        return kernels.paged_attention(q, k_cache, v_cache, self.block_tables, self.seq_lens, scale=self.scale)
