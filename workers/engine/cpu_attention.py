"""Decode attention over the paged cache for CPU tensors: the contract of
``ponder.kernels.shared_prefix_attention`` (same arguments, same result).

fp32 and bf16 tensors take the fused C++ kernel (:mod:`.cpu_fused`: one pass over each row's
blocks with an online softmax; arith's job, a layer at 144 rows: ~4.5 ms against ~14 ms for
the torch path below) when it builds; ``PONDER_CPU_ATTENTION=torch``, a failed build and other
dtypes (fp16) take the torch path, in fewer and larger torch ops than the reference.

Why a CPU path of our own: on the CPU the kernels' PyTorch reference is written for clarity and
safety (it zeroes the gathered keys/values past each length, contracts with ``einsum``, which
copies the gathered keys into a head-major layout, and checks every argument per call); at
batch 64 over SmolLM2 it took 56% of a decode step and made the whole engine slower than
transformers' ``generate`` (265 s against 182 s for 64×256 tokens, one thread). Attention of
one decode step of SmolLM2 (30 layers, 64 rows of 186 tokens sharing an 80-token prompt), one
thread: reference 279 ms, this path 71 ms (paged, without the shared prefix: 122 ms).

How: each row's blocks are gathered with ``index_select`` (whole blocks, in the cache's own
order) and multiplied per kv head with ``bmm`` on strided views, so the gathered keys are never
copied again (the reference's ``einsum`` copies them into a head-major layout and zeroes the
slots past each length first). A group's shared prefix is gathered once and multiplied
against all its rows' queries in one ``bmm`` per kv head; prefix and suffix scores share one
softmax over the last dimension.

With one query per kv head (arith's 8 heads over 8 kv heads) and fp32 caches, the suffix
takes the in-place path (:func:`_attend_in_place`): the keys of each row's valid suffix blocks
are gathered without padding to the longest suffix and multiplied in the gather buffer by
their owner row's query, and the values are never gathered at all: ``embedding_bag`` forms
each (row, head)'s probability-weighted sum of value vectors straight from the cache. On the
arith eval job's shapes (144 rows of 60-112 suffix slots under a 32-token prompt, 8 heads)
a layer's attention took 15 ms against 24 ms before, one thread.

Unused cache slots are never NaN here: :class:`~ponder.workers.engine.kv_cache.BlockPool`
zeroes each block the first time it hands it out, so masked slots (probability 0) times their
values stay 0.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ponder.workers.engine import cpu_fused

_WORKSPACE = threading.local()  # per thread: name -> a flat buffer reused across layers and steps


def _buffer(name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reusable flat buffer of at least ``numel`` elements. Fresh tensors of tens of MB come
    from mmap and are page-faulted on first touch: gathering a batch's keys into a new tensor
    took 42 ms, into a reused one 7.6 ms (53 MB, one thread), the rest being the page faults."""
    pool = _WORKSPACE.__dict__.setdefault("buffers", {})
    key = (name, like.dtype, like.device)
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        # a normal tensor even when made under inference_mode: it is written in both modes
        with torch.inference_mode(False):
            buf = torch.empty(max(numel, int(1.25 * (buf.numel() if buf is not None else 0))), dtype=like.dtype,
                              device=like.device)
        pool[key] = buf
    return buf[:numel]


def _gather(cache: torch.Tensor, tables: torch.Tensor, rows: int, T: int, name: str) -> torch.Tensor:
    """The blocks listed in ``tables`` (rows, nb) as (rows, T, H_kv, D) float32, in the reused
    buffer ``name`` (valid until the next gather into it). ``index_select`` copies whole
    blocks; advanced indexing (``cache[tables]``) goes element by element and measured 6× slower
    (1.12 ms against 0.18 ms for 6.3 MB, one thread)."""
    nblocks, bs, Hkv, D = cache.shape
    idx = tables.reshape(-1)
    flat = cache.view(nblocks, bs * Hkv * D)
    out = _buffer(name, idx.numel() * bs * Hkv * D, cache).view(idx.numel(), bs * Hkv * D)
    torch.index_select(flat, 0, idx, out=out)
    return out.view(rows, T, Hkv, D).float()


@dataclass
class TorchPlan:
    """The torch path's index bookkeeping of one decode step, shared by every layer."""

    S: int
    suffix_tables: torch.Tensor  # (S, nbs) int64, cut to the longest suffix
    Ts: int
    valid: torch.Tensor  # (S, Tp+Ts) bool: which gathered slots each row attends to
    Tp: int = 0  # 0: no row has a prefix
    rows: torch.Tensor | None = None  # (R,) rows that have a prefix
    g_of_row: torch.Tensor | None = None  # (R,) their group among the Gp prefix groups
    slot: torch.Tensor | None = None  # (R,) their position within the group
    prefix_tables: torch.Tensor | None = None  # (Gp, nbp) int64
    M: int = 0  # most rows in one prefix group
    suffix_lens: torch.Tensor | None = None  # (S,) int64
    flat: FlatSuffix | None = None  # built by the first layer that takes the in-place path


@dataclass
class FlatSuffix:
    """Bookkeeping of the in-place path (one query per kv head, fp32 caches), built once per
    step: every valid suffix block once, with its owner row (keys), and the rows of the value
    table each (row, head) reads (values)."""

    blocks: torch.Tensor  # (Nb,) int64: each row's suffix blocks that hold a valid slot, row by row
    owner: torch.Tensor  # (Nb,) the row of each
    dest: torch.Tensor  # (Nb,) owner * nbs + j: its place in the padded (S, nbs) layout
    bag_idx: torch.Tensor  # (S*H_kv, Ts): row slot * H_kv + h of the (NB*BS*H_kv, D) value table


def make_flat(plan: TorchPlan, block_size: int, Hkv: int) -> FlatSuffix:
    assert plan.suffix_lens is not None
    S, Ts, bs = plan.S, plan.Ts, block_size
    dev = plan.suffix_tables.device
    nbs = plan.suffix_tables.shape[1]
    has = torch.arange(nbs, device=dev)[None, :] * bs < plan.suffix_lens[:, None]  # (S, nbs)
    dest = has.reshape(-1).nonzero().flatten()
    t = torch.arange(Ts, device=dev)
    slot = plan.suffix_tables[:, t // bs] * bs + t % bs  # (S, Ts)
    # Every bag is the row's whole padded suffix: a slot past the row's length has probability
    # 0 and a finite value (blocks are zeroed when first handed out), so it adds nothing, and
    # equal-size bags need no per-step ragged index (measured: building one took 6 ms a step
    # at 144 rows, longer than the padding costs the embedding_bag calls).
    bag_idx = (slot[:, None, :] * Hkv + torch.arange(Hkv, device=dev)[None, :, None]).view(S * Hkv, Ts)
    return FlatSuffix(plan.suffix_tables.reshape(-1)[dest], torch.div(dest, nbs, rounding_mode="floor"), dest, bag_idx)


@dataclass
class AttentionPlan:
    """One decode step's tables as the contract gives them, shared by every layer; the torch
    path's bookkeeping (:class:`TorchPlan`) is built by the first layer that takes it (the
    fused kernel reads the tables as they are)."""

    block_size: int
    prefix_tables: torch.Tensor | None
    prefix_lens: torch.Tensor | None
    seq_group: torch.Tensor | None
    suffix_tables: torch.Tensor
    suffix_lens: torch.Tensor
    torch_plan: TorchPlan | None = None

    def for_torch(self) -> TorchPlan:
        if self.torch_plan is None:
            self.torch_plan = make_torch_plan(self.block_size, self.prefix_tables, self.prefix_lens, self.seq_group,
                                              self.suffix_tables, self.suffix_lens)
        return self.torch_plan


def make_plan(
    block_size: int,
    prefix_tables: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
    seq_group: torch.Tensor | None,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
) -> AttentionPlan:
    """The step's plan: prefix_tables/prefix_lens/seq_group all None for plain paged attention."""
    return AttentionPlan(block_size, prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens)


def make_torch_plan(
    block_size: int,
    prefix_tables: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
    seq_group: torch.Tensor | None,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
) -> TorchPlan:
    S = suffix_tables.shape[0]
    dev = suffix_tables.device
    slens = suffix_lens.long()
    nbs = max(1, math.ceil(int(slens.max()) / block_size))
    Ts = nbs * block_size
    valid = torch.arange(Ts, device=dev)[None, :] < slens[:, None]  # (S, Ts)
    plan = TorchPlan(S, suffix_tables[:, :nbs].long(), Ts, valid, suffix_lens=slens)
    if prefix_tables is None or prefix_lens is None or seq_group is None:
        return plan
    plens = prefix_lens.long()
    grp = seq_group.long()
    row_len = plens[grp]  # (S,)
    rows = (row_len > 0).nonzero().flatten()
    if not rows.numel():
        return plan
    gids, g_of_row = torch.unique(grp[rows], return_inverse=True)  # groups with a prefix
    counts = torch.bincount(g_of_row, minlength=gids.numel())
    order = torch.argsort(g_of_row, stable=True)
    slot = torch.empty_like(g_of_row)
    slot[order] = torch.arange(rows.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[g_of_row[order]]
    nbp = math.ceil(int(plens[gids].max()) / block_size)
    Tp = nbp * block_size
    plan.valid = torch.cat([torch.arange(Tp, device=dev)[None, :] < row_len[:, None], valid], dim=1)
    plan.Tp, plan.rows, plan.g_of_row, plan.slot, plan.M = Tp, rows, g_of_row, slot, int(counts.max())
    plan.prefix_tables = prefix_tables[gids, :nbp].long()
    return plan


def _prefix_scores(q4: torch.Tensor, k_cache: torch.Tensor, plan: TorchPlan) -> torch.Tensor:
    """Scores (S, H_kv, G, Tp) of every row against its group's prefix (zero for rows without
    one: masked by ``plan.valid``). A group's prefix is gathered once and multiplied against
    all its rows' queries: one ``bmm`` over (group, kv head) pairs."""
    S, Hkv, G, D = q4.shape
    Tp, rows, g_of_row, slot, M = plan.Tp, plan.rows, plan.g_of_row, plan.slot, plan.M
    assert rows is not None and g_of_row is not None and slot is not None and plan.prefix_tables is not None
    Gp = plan.prefix_tables.shape[0]
    kp = _gather(k_cache, plan.prefix_tables, Gp, Tp, "kp")  # (Gp, Tp, H_kv, D): once per group
    qpad = q4.new_zeros((Gp, Hkv, M, G, D))  # each group's rows' queries, per kv head
    qpad[g_of_row, :, slot] = q4[rows]
    kt = kp.permute(0, 2, 3, 1).reshape(Gp * Hkv, D, Tp)
    sp = torch.bmm(qpad.view(Gp * Hkv, M * G, D), kt).view(Gp, Hkv, M, G, Tp)
    if rows.numel() == S:  # every row has a prefix (rows is then 0..S-1 in order)
        return sp[g_of_row, :, slot]
    pre = q4.new_zeros((S, Hkv, G, Tp))
    pre[rows] = sp[g_of_row, :, slot]
    return pre


def _add_prefix_values(out: torch.Tensor, p: torch.Tensor, v_cache: torch.Tensor, plan: TorchPlan) -> None:
    """out (S, H_kv, G, D) += each row's prefix probabilities (p[..., :Tp]) times its group's
    prefix values: one ``bmm`` over (group, kv head) pairs."""
    S, Hkv, G, D = out.shape
    Tp, rows, g_of_row, slot, M = plan.Tp, plan.rows, plan.g_of_row, plan.slot, plan.M
    assert rows is not None and g_of_row is not None and slot is not None and plan.prefix_tables is not None
    Gp = plan.prefix_tables.shape[0]
    vp = _gather(v_cache, plan.prefix_tables, Gp, Tp, "vp")
    every = rows.numel() == S  # every row has a prefix (rows is then 0..S-1 in order)
    ppad = p.new_zeros((Gp, Hkv, M, G, Tp))
    ppad[g_of_row, :, slot] = p[..., :Tp] if every else p[rows, :, :, :Tp]
    vt = vp.permute(0, 2, 1, 3).reshape(Gp * Hkv, Tp, D)
    op = torch.bmm(ppad.view(Gp * Hkv, M * G, Tp), vt).view(Gp, Hkv, M, G, D)
    if every:
        out += op[g_of_row, :, slot]
    else:
        out[rows] += op[g_of_row, :, slot]


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """q (S, H_q, D) over the cache as planned → (S, H_q, D) in q's dtype. fp32 and bf16
    tensors take the fused kernel (:mod:`.cpu_fused`) when it is built and wanted (:func:`.cpu_fused.wanted`:
    at one torch thread unless the environment says otherwise); everything else the torch path."""
    if cpu_fused.usable(q, k_cache, v_cache) and cpu_fused.wanted():
        fn = cpu_fused.kernel()
        if fn is not None:
            return cpu_fused.attention(fn, q, k_cache, v_cache, plan.suffix_tables, plan.suffix_lens,
                                       plan.prefix_tables, plan.prefix_lens, plan.seq_group, scale)
    return _attend_torch(q, k_cache, v_cache, plan.for_torch(), scale)


def _attend_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TorchPlan,
                  scale: float) -> torch.Tensor:
    """The torch path: any dtype, any G."""
    S, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    G = Hq // Hkv
    if G == 1 and k_cache.dtype == torch.float32 and v_cache.dtype == torch.float32:
        return _attend_in_place(q, k_cache, v_cache, plan, scale)
    q4 = q.float().view(S, Hkv, G, D)
    ks = _gather(k_cache, plan.suffix_tables, S, plan.Ts, "ks")  # (S, Ts, H_kv, D)
    vs = _gather(v_cache, plan.suffix_tables, S, plan.Ts, "vs")
    if G == 1:
        # One query per kv head (bf16 caches; fp32 ones take the in-place path): a product
        # into a reused buffer and a sum over D reads the keys once (arith, 256 rows of 128
        # slots, 8 heads: 13 ms against 23 ms for bmm, one thread). With G > 1 the bmm is a
        # real GEMM and wins (SmolLM2's G = 3: 5.4 ms against 10.9 ms).
        prod = _buffer("prod", S * plan.Ts * Hkv * D, ks).view(S, plan.Ts, Hkv, D)
        torch.mul(ks, q4[:, None, :, 0, :], out=prod)
        parts = [prod.sum(-1).permute(0, 2, 1).unsqueeze(2)]  # (S, H_kv, 1, Ts)
    else:
        # One bmm per kv head on strided views: no copy of the gathered keys.
        parts = [torch.stack([torch.bmm(q4[:, h], ks[:, :, h].transpose(1, 2)) for h in range(Hkv)], 1)]  # (S, H_kv, G, Ts)
    Tp = plan.Tp
    if Tp:
        parts.insert(0, _prefix_scores(q4, k_cache, plan))
    scores = torch.cat(parts, dim=3) * scale  # (S, H_kv, G, Tp+Ts)
    scores.masked_fill_(~plan.valid[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=3)  # every row has >= 1 valid slot (its newest token)
    if G == 1:
        prod = _buffer("prod", S * plan.Ts * Hkv * D, vs).view(S, plan.Ts, Hkv, D)
        torch.mul(p[:, :, 0, Tp:].transpose(1, 2).unsqueeze(-1), vs, out=prod)
        out = prod.sum(1).unsqueeze(2)  # (S, H_kv, 1, D)
    else:
        out = torch.stack([torch.bmm(p[:, h, :, Tp:], vs[:, :, h]) for h in range(Hkv)], 1)  # (S, H_kv, G, D)
    if Tp:
        _add_prefix_values(out, p, v_cache, plan)
    return out.view(S, Hq, D).to(q.dtype)


def _attend_in_place(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TorchPlan,
                     scale: float) -> torch.Tensor:
    """One query per kv head, fp32 caches: the suffix read where it lies, without padding.

    Keys: each row's valid suffix blocks (no padding to the longest suffix) are gathered into
    one reused buffer and multiplied there by their owner row's query, then summed over D; the
    block scores are put in place in the padded (S, Ts) layout, which only the softmax sees.
    Values: ``embedding_bag`` sums each (row, head)'s value vectors weighted by their
    probabilities straight from the cache (one bag per row and head, over the row's padded
    suffix), so the values are never gathered or multiplied into a buffer (arith, 144 rows of
    60-112 slots, 8 heads: 3 ms against 9 ms for gather, product and sum, one thread).
    """
    S, Hkv, D = q.shape
    NB, bs = k_cache.shape[:2]
    if plan.flat is None:
        plan.flat = make_flat(plan, bs, Hkv)
    f = plan.flat
    q3 = q.float() * scale  # scores come out scaled
    Nb = f.blocks.numel()
    width = bs * Hkv * D
    kb = _buffer("ks", Nb * width, k_cache).view(Nb, width)
    torch.index_select(k_cache.view(NB, width), 0, f.blocks, out=kb)
    prod = kb.view(Nb, bs, Hkv, D).mul_(q3[f.owner].unsqueeze(1))  # in place: ~10% faster than a second buffer
    nbs = plan.suffix_tables.shape[1]
    # positions of padding blocks are left as they were: the mask below covers them
    sc = _buffer("sc", S * nbs * bs * Hkv, q3).view(S * nbs, bs, Hkv)
    sc.index_copy_(0, f.dest, prod.sum(-1))
    suffix = sc.view(S, plan.Ts, Hkv).permute(0, 2, 1).unsqueeze(2)  # (S, H_kv, 1, Ts)
    q4 = q3.view(S, Hkv, 1, D)
    Tp = plan.Tp
    parts = [_prefix_scores(q4, k_cache, plan), suffix] if Tp else [suffix]
    scores = torch.cat(parts, dim=3)  # (S, H_kv, 1, Tp+Ts), contiguous
    scores.masked_fill_(~plan.valid[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=3)  # every row has >= 1 valid slot (its newest token)
    w = p[:, :, 0, Tp:].reshape(S * Hkv, plan.Ts)
    out = F.embedding_bag(f.bag_idx, v_cache.view(-1, D), mode="sum", per_sample_weights=w).view(S, Hkv, 1, D)
    if Tp:
        _add_prefix_values(out, p, v_cache, plan)
    return out.view(S, Hkv, D).to(q.dtype)


def shared_prefix_attention_cpu(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_tables: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
    seq_group: torch.Tensor | None,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The kernels' contract in one call. q (S, H_q, D); caches (num_blocks, block_size, H_kv,
    D); prefix_tables (G, nb) with prefix_lens (G,) and seq_group (S,), or all three None
    (plain paged attention); suffix_tables (S, nb), suffix_lens (S,). Returns (S, H_q, D)."""
    plan = make_plan(k_cache.shape[1], prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens)
    return attend(q, k_cache, v_cache, plan, scale)
