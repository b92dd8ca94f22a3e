"""Decode attention over the paged cache: the batch's block tables, built once per decode step
and used by every layer, and the call into ``ponder.kernels`` (Triton on CUDA) or, for CPU
tensors, into the engine's own implementation of the same contract (``cpu_attention.py``; the
kernels' PyTorch reference with ``EngineConfig(attention="kernels")``).

With ``shared_prefix`` on, each row joins the group of the longest run of leading full blocks
it shares with at least one other row of the batch (found by refining the rows column by
column, by block id). For one question's samples that is the prompt; for beam search it is
the parent's whole path (prompt and earlier steps) shared by the M siblings, so the reference
reads each parent's history once per parent instead of once per child. A group's prefix is
read once for all its rows by ``shared_prefix_attention``; each row reads only its own suffix.
Rows that share nothing go into group 0, whose prefix is empty.
"""

from __future__ import annotations

import torch

from ponder import kernels
from ponder.kernels import dispatch
from ponder.workers.engine.cpu_attention import AttentionPlan, attend, make_plan
from ponder.workers.engine.kv_cache import Sequence


def _pad(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Block tables (len(rows), longest) int32, padded with block 0: one tensor from one
    list (a tensor per row cost 3 ms per decode step at 256 rows)."""
    width = max(1, max((len(r) for r in rows), default=1))
    pad = [0] * width
    return torch.tensor([r + pad[len(r):] for r in rows], dtype=torch.int32, device=device)


def shared_groups(seqs: list[Sequence], lengths: list[int], block_size: int) -> tuple[list[int], list[int], list[list[int]]]:
    """(group of each row, prefix blocks of each row's group, each group's prefix blocks).

    Partition refinement over block-table columns: at column j the rows that agree on blocks
    0..j form a class; a row's group is the deepest class of two or more rows it belongs to.
    Only blocks full for every row are compared (a block shared by two rows is never either
    row's partial last block: writing into it would have copied it first).
    """
    S = len(seqs)
    group = [0] * S
    depth = [0] * S
    prefixes: list[list[int]] = [[]]
    full = [n // block_size for n in lengths]
    classes = [list(range(S))]
    j = 0
    while classes:
        refined: list[list[int]] = []
        for rows in classes:
            split: dict[int, list[int]] = {}
            for r in rows:
                if full[r] > j:
                    split.setdefault(seqs[r].blocks[j], []).append(r)
            for members in split.values():
                if len(members) > 1:
                    refined.append(members)
        for members in refined:  # deeper classes overwrite shallower ones
            g = len(prefixes)
            prefixes.append(seqs[members[0]].blocks[: j + 1])
            for r in members:
                group[r], depth[r] = g, j + 1
        classes = refined
        j += 1
    # Drop prefixes no row ended up in (all their rows moved deeper) and renumber.
    used = sorted(set(group) - {0})
    renumber = {g: i + 1 for i, g in enumerate(used)}
    group = [renumber.get(g, 0) for g in group]
    return group, depth, [[]] + [prefixes[g] for g in used]


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
        attention: str = "auto",
    ) -> None:
        self.scale = scale
        self.shared = False
        # Our CPU path only where the dispatch would pick the reference on its own.
        self.own_cpu = attention == "auto" and device.type == "cpu" and dispatch.mode() == "auto"
        self.plan: AttentionPlan | None = None
        self.validated = False
        bs = block_size
        if shared_prefix and len(seqs) > 1:
            group, depth, prefixes = shared_groups(seqs, lengths, bs)
            if len(prefixes) > 1:
                self.shared = True
                self.prefix_tables = _pad(prefixes, device)  # (G, nb)
                self.prefix_lens = torch.tensor([len(p) * bs for p in prefixes], dtype=torch.int32, device=device)
                self.seq_group = torch.tensor(group, dtype=torch.int32, device=device)
                self.suffix_tables = _pad([s.blocks[d:] for s, d in zip(seqs, depth)], device)
                self.suffix_lens = torch.tensor(
                    [n - d * bs for n, d in zip(lengths, depth)], dtype=torch.int32, device=device
                )
                return
        self.block_tables = _pad([s.blocks for s in seqs], device)  # (B, nb)
        self.seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        if self.own_cpu:
            if self.plan is None:  # built on the first layer, reused by the others
                bs = k_cache.shape[1]
                if self.shared:
                    self.plan = make_plan(bs, self.prefix_tables, self.prefix_lens, self.seq_group,
                                          self.suffix_tables, self.suffix_lens)
                else:
                    self.plan = make_plan(bs, None, None, None, self.block_tables, self.seq_lens)
            return attend(q, k_cache, v_cache, self.plan, self.scale)
        # The tables are the same for every layer: the kernels check their values (host syncs)
        # on the first layer of the step only.
        validate, self.validated = not self.validated, True
        if self.shared:
            return kernels.shared_prefix_attention(
                q, k_cache, v_cache, self.prefix_tables, self.prefix_lens, self.seq_group,
                self.suffix_tables, self.suffix_lens, scale=self.scale, validate=validate,
            )
        return kernels.paged_attention(
            q, k_cache, v_cache, self.block_tables, self.seq_lens, scale=self.scale, validate=validate
        )
