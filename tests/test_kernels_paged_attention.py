"""Paged decode attention and its shared-prefix variant: references against a naive per-token
loop, the Triton kernels (interpreter) against the references over GQA ratios, block sizes,
head dims and dtypes, and the launchers' argument checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from ponder.kernels.paged_attention import (
    merge_attention,
    paged_attention_reference,
    paged_attention_triton,
    shared_prefix_attention_reference,
    shared_prefix_attention_triton,
)

pa = importlib.import_module("ponder.kernels.paged_attention")  # the package shadows the module name

# the reference works in fp32 and rounds once; the kernel also rounds p to fp16 before p @ v
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=4e-3, rtol=4e-3)}


def _cache(NB: int, BS: int, Hkv: int, D: int, dtype: torch.dtype, g: torch.Generator):
    # NaN everywhere first: slots no sequence owns must never reach an output
    k = torch.full((NB, BS, Hkv, D), float("nan"))
    v = torch.full((NB, BS, Hkv, D), float("nan"))
    return k.to(dtype), v.to(dtype)


class Paged:
    """Random sequences in a NaN-filled paged cache, with block tables and -1 past each length."""

    def __init__(self, lens: list[int], Hq: int, Hkv: int, D: int, BS: int, dtype: torch.dtype, seed: int = 0,
                 spare_cols: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.BS, self.Hq, self.Hkv, self.D = BS, Hq, Hkv, D
        need = [math.ceil(n / BS) for n in lens]
        NB = sum(need) + 3
        self.k, self.v = _cache(NB, BS, Hkv, D, dtype, g)
        perm = torch.randperm(NB, generator=g).tolist()
        cols = max(need + [1]) + spare_cols
        self.tables = torch.full((len(lens), cols), -1, dtype=torch.int32)
        for s, (n, nb) in enumerate(zip(lens, need)):
            blocks = [perm.pop() for _ in range(nb)]
            self.tables[s, :nb] = torch.tensor(blocks, dtype=torch.int32)
            for t in range(n):
                self.k[blocks[t // BS], t % BS] = torch.randn(Hkv, D, generator=g).to(dtype)
                self.v[blocks[t // BS], t % BS] = torch.randn(Hkv, D, generator=g).to(dtype)
        self.lens = torch.tensor(lens, dtype=torch.int32)
        self.q = torch.randn(len(lens), Hq, D, generator=g).to(dtype)

    def keys(self, table: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, H_kv, D) keys and values of one table row, token by token."""
        ks = [self.k[int(table[t // self.BS]), t % self.BS] for t in range(n)]
        vs = [self.v[int(table[t // self.BS]), t % self.BS] for t in range(n)]
        empty = torch.empty(0, self.Hkv, self.D)
        return (torch.stack(ks).double() if ks else empty.double()), (torch.stack(vs).double() if vs else empty.double())


def _naive_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (H_q, D), k/v (T, H_kv, D) -> (H_q, D) by explicit softmax per query head, in float64."""
    Hq, Hkv = q.shape[0], k.shape[1]
    out = torch.zeros(Hq, q.shape[1], dtype=torch.float64)
    for h in range(Hq):
        kh = h // (Hq // Hkv)
        logits = [float(k[t, kh] @ q[h].double()) * scale for t in range(k.shape[0])]
        m = max(logits)
        w = [math.exp(x - m) for x in logits]
        out[h] = sum(wi * v[t, kh] for t, wi in enumerate(w)) / sum(w)
    return out


def test_paged_reference_matches_naive_loop() -> None:
    c = Paged([1, 16, 17, 40, 5], Hq=6, Hkv=2, D=8, BS=16, dtype=torch.float32, seed=1)
    out = paged_attention_reference(c.q, c.k, c.v, c.tables, c.lens, scale=0.3)
    assert not out.isnan().any()
    for s in range(5):
        k, v = c.keys(c.tables[s], int(c.lens[s]))
        torch.testing.assert_close(out[s].double(), _naive_row(c.q[s], k, v, 0.3), atol=1e-5, rtol=1e-5)


def _shared(lens_prefix: list[int], groups: list[int], suffix: list[int], Hq: int, Hkv: int, D: int, BS: int,
            dtype: torch.dtype, seed: int = 0):
    """One Paged cache holding the prefixes first, then the per-sequence suffixes."""
    c = Paged(lens_prefix + suffix, Hq, Hkv, D, BS, dtype, seed)
    Gn = len(lens_prefix)
    pre_t, suf_t = c.tables[:Gn], c.tables[Gn:]
    pre_l, suf_l = c.lens[:Gn], c.lens[Gn:]
    q = c.q[Gn:]
    return c, q, pre_t, pre_l, torch.tensor(groups, dtype=torch.int32), suf_t, suf_l


def test_shared_prefix_reference_matches_naive_loop() -> None:
    c, q, pt, pl, grp, st, sl = _shared([20, 0, 33], [0, 1, 0, 2, 0], [0, 5, 9, 16, 1], 4, 2, 8, 16, torch.float32, 2)
    out = shared_prefix_attention_reference(q, c.k, c.v, pt, pl, grp, st, sl)
    for s in range(5):
        g = int(grp[s])
        kp, vp = c.keys(pt[g], int(pl[g]))
        ks, vs = c.keys(st[s], int(sl[s]))
        want = _naive_row(q[s], torch.cat([kp, ks]), torch.cat([vp, vs]), 1 / math.sqrt(8))
        torch.testing.assert_close(out[s].double(), want, atol=1e-5, rtol=1e-5)


def test_merge_attention_equals_attention_over_the_union() -> None:
    c = Paged([23, 9], Hq=2, Hkv=1, D=4, BS=16, dtype=torch.float32, seed=3)
    q = c.q[:1]
    ka, va = c.keys(c.tables[0], 23)
    kb, vb = c.keys(c.tables[1], 9)
    parts = []
    for k, v in ((ka, va), (kb, vb)):
        logits = torch.einsum("hd,thd->ht", q[0].double(), k) * 0.5
        lse = torch.logsumexp(logits, -1)
        parts += [torch.einsum("ht,thd->hd", torch.softmax(logits, -1), v)[None], lse[None]]
    merged = merge_attention(*parts)
    torch.testing.assert_close(merged[0], _naive_row(q[0], torch.cat([ka, kb]), torch.cat([va, vb]), 0.5))


GEOMETRY = [(1, 64), (3, 128), (8, 64)]  # (GQA ratio, head_dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("BS", [16, 32])
@pytest.mark.parametrize("ratio,D", GEOMETRY)
def test_paged_triton_matches_reference(ratio: int, D: int, BS: int, dtype: torch.dtype) -> None:
    Hkv = 2 if ratio < 8 else 1
    # one sequence shorter than a block, one exactly a block, one a token past, one of 2.5 blocks
    lens = [1, BS, BS + 1, 5 * BS // 2]
    c = Paged(lens, Hq=ratio * Hkv, Hkv=Hkv, D=D, BS=BS, dtype=dtype, seed=ratio * D + BS)
    want = paged_attention_reference(c.q, c.k, c.v, c.tables, c.lens)
    got = paged_attention_triton(c.q, c.k, c.v, c.tables, c.lens)
    assert got.dtype == dtype and got.shape == c.q.shape and not got.isnan().any()
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("BS", [16, 32])
@pytest.mark.parametrize("ratio,D", GEOMETRY)
def test_shared_prefix_triton_matches_reference(ratio: int, D: int, BS: int, dtype: torch.dtype) -> None:
    Hkv = 2 if ratio < 8 else 1
    # group 0: three members, prefix 1.5 blocks; group 1: empty prefix; group 2: no members;
    # group 3: a prefix shorter than a block. Suffixes of 0 tokens, < a block and > a block.
    args = _shared([3 * BS // 2, 0, BS, 5], [0, 1, 0, 3, 0, 3], [0, 3, BS + 2, 1, 7, 0],
                   ratio * Hkv, Hkv, D, BS, dtype, seed=ratio + D + BS)
    c, rest = args[0], args[1:]
    want = shared_prefix_attention_reference(rest[0], c.k, c.v, *rest[1:])
    got = shared_prefix_attention_triton(rest[0], c.k, c.v, *rest[1:])
    assert got.dtype == dtype and not got.isnan().any()
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_shared_prefix_many_members_span_several_chunks() -> None:
    """Ratio 8 packs 8 members a chunk: a 19-member group needs three prefix programs."""
    BS = 16
    args = _shared([40, 3], [0] * 19 + [1] * 2, [(s * 7) % 20 for s in range(21)], 8, 1, 64, BS, torch.float32, seed=11)
    c, rest = args[0], args[1:]
    want = shared_prefix_attention_reference(rest[0], c.k, c.v, *rest[1:])
    torch.testing.assert_close(shared_prefix_attention_triton(rest[0], c.k, c.v, *rest[1:]), want, **TOL[torch.float32])


@pytest.mark.parametrize("gpu_tiles,dtype", [(False, torch.float32), (True, torch.float16), (True, torch.float32)])
def test_long_sequences_take_several_trips(monkeypatch: pytest.MonkeyPatch, gpu_tiles: bool, dtype: torch.dtype) -> None:
    """Past one trip (256 tokens in the interpreter; on the GPU, forced here, 64 for fp16 and
    one 16-token block for fp32) the online softmax carries its running max and sum across
    trips, and a trip reads several block-table entries."""
    if gpu_tiles:
        monkeypatch.setattr(pa, "is_interpreted", lambda _k: False)
    c = Paged([300, 65, 7], Hq=6, Hkv=2, D=64, BS=16, dtype=dtype, seed=13)
    want = paged_attention_reference(c.q, c.k, c.v, c.tables, c.lens)
    torch.testing.assert_close(paged_attention_triton(c.q, c.k, c.v, c.tables, c.lens), want, **TOL[dtype])
    args = _shared([272, 16], [0, 0, 1, 0], [70, 0, 130, 1], 6, 2, 64, 16, dtype, seed=14)
    c, rest = args[0], args[1:]
    want = shared_prefix_attention_reference(rest[0], c.k, c.v, *rest[1:])
    torch.testing.assert_close(shared_prefix_attention_triton(rest[0], c.k, c.v, *rest[1:]), want, **TOL[dtype])


@pytest.mark.parametrize("gpu_tiles", [False, True])
@pytest.mark.parametrize("BS", [1, 8, 12, 48])
def test_block_sizes_that_are_not_powers_of_two_or_below_16(monkeypatch: pytest.MonkeyPatch, BS: int,
                                                            gpu_tiles: bool) -> None:
    """A trip gathers its tokens through the block table, so it may span many small blocks or
    part of a large one; the engine's block size is configurable (1..1024)."""
    if gpu_tiles:
        monkeypatch.setattr(pa, "is_interpreted", lambda _k: False)
    dtype = torch.float16 if gpu_tiles else torch.float32
    c = Paged([1, BS + 1, 70], Hq=4, Hkv=2, D=64, BS=BS, dtype=dtype, seed=BS)
    want = paged_attention_reference(c.q, c.k, c.v, c.tables, c.lens)
    torch.testing.assert_close(paged_attention_triton(c.q, c.k, c.v, c.tables, c.lens), want, **TOL[dtype])
    args = _shared([2 * BS, 5], [0, 1, 0], [3, 0, BS + 2], 4, 2, 64, BS, dtype, seed=BS + 1)
    c, rest = args[0], args[1:]
    want = shared_prefix_attention_reference(rest[0], c.k, c.v, *rest[1:])
    torch.testing.assert_close(shared_prefix_attention_triton(rest[0], c.k, c.v, *rest[1:]), want, **TOL[dtype])


def test_paged_triton_strided_views_and_scale() -> None:
    """A layer's K/V as a view into a (layers, ...) cache, q sliced from a wider tensor,
    int64 lengths and tables read column-strided."""
    c = Paged([3, 18, 33], Hq=4, Hkv=2, D=64, BS=16, dtype=torch.float32, seed=7)
    stack_k = torch.stack([torch.zeros_like(c.k), c.k])  # (layers, NB, BS, H_kv, D)
    stack_v = torch.stack([c.v, torch.zeros_like(c.v)])
    k, v = stack_k[1], stack_v[0]
    q = torch.cat([c.q, torch.zeros_like(c.q)], dim=1)[:, :4]  # (S, H_q, D), row stride 2*H_q*D
    tables = torch.cat([c.tables, c.tables], 1).long().t().contiguous().t()[:, : c.tables.shape[1]]
    lens = c.lens.long()
    want = paged_attention_reference(q, k, v, tables, lens, scale=0.05)
    torch.testing.assert_close(paged_attention_triton(q, k, v, tables, lens, scale=0.05), want, **TOL[torch.float32])


def test_empty_batch() -> None:
    c = Paged([3], Hq=2, Hkv=1, D=64, BS=16, dtype=torch.float32)
    e = torch.empty(0, dtype=torch.int32)
    out = paged_attention_triton(c.q[:0], c.k, c.v, c.tables[:0], e)
    assert out.shape == (0, 2, 64)
    out = shared_prefix_attention_triton(c.q[:0], c.k, c.v, c.tables, c.lens, e, c.tables[:0], e)
    assert out.shape == (0, 2, 64)


def _ok():
    c = Paged([3, 20], Hq=4, Hkv=2, D=64, BS=16, dtype=torch.float32)
    return c.q, c.k, c.v, c.tables, c.lens


@pytest.mark.parametrize("fn", [paged_attention_reference, paged_attention_triton])
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][0], *a[1:]), "q must be"),
        (lambda a: (a[0], a[1][..., :32], *a[2:]), "k_cache and v_cache must both be"),
        (lambda a: (a[0][:, :3], *a[1:]), "must be a multiple of H_kv"),
        (lambda a: (a[0], a[1].half(), a[2].half(), *a[3:]), "dtypes differ"),
        (lambda a: (a[0][..., :32], a[1][..., :32], a[2][..., :32], *a[3:]), None),  # fine: D = 32
        (lambda a: (*a[:3], a[3].float(), a[4]), "block_tables must be an integer"),
        (lambda a: (*a[:3], a[3][:1], a[4]), "block_tables must be an integer"),
        (lambda a: (*a[:4], a[4].float()), "seq_lens must be an integer"),
        (lambda a: (*a[:4], torch.tensor([0, 3], dtype=torch.int32)), "seq_lens must be >= 1"),
        (lambda a: (*a[:4], torch.tensor([3, 99], dtype=torch.int32)), "longer than its block_tables row"),
        (lambda a: (*a[:3], torch.tensor([[0, -1, -1], [-1, 1, -1]], dtype=torch.int32), a[4]), r"block_tables\[1, 0\] = -1"),
        (lambda a: (*a[:3], torch.tensor([[0, 9, 9], [99, 1, 9]], dtype=torch.int32), a[4]), "is not a block of the"),
    ],
)
def test_paged_bad_arguments_raise(fn, mutate, match: str | None) -> None:
    args = mutate(_ok())
    if match is None:
        fn(*args)
        return
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_paged_launcher_rejects_layouts_the_kernel_cannot_read() -> None:
    q, k, v, bt, lens = _ok()
    with pytest.raises(ValueError, match="contiguous along head_dim"):
        paged_attention_triton(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, bt, lens)
    with pytest.raises(ValueError, match="contiguous along head_dim"):
        paged_attention_triton(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, bt, lens)
    with pytest.raises(ValueError, match="head_dim <= 256"):
        paged_attention_triton(q.repeat(1, 1, 5), k.repeat(1, 1, 1, 5), v.repeat(1, 1, 1, 5), bt, lens)
    with pytest.raises(ValueError, match="bfloat16"):
        paged_attention_triton(q.bfloat16(), k.bfloat16(), v.bfloat16(), bt, lens)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        paged_attention_triton(q.double(), k.double(), v.double(), bt, lens)


@pytest.mark.parametrize("fn", [shared_prefix_attention_reference, shared_prefix_attention_triton])
def test_shared_prefix_bad_arguments_raise(fn) -> None:
    c, q, pt, pl, grp, st, sl = _shared([20, 4], [0, 1, 0], [0, 5, 9], 4, 2, 64, 16, torch.float32)
    good = (q, c.k, c.v, pt, pl, grp, st, sl)
    fn(*good)

    def bad(i: int, value: torch.Tensor, match: str) -> None:
        args = list(good)
        args[i] = value
        with pytest.raises(ValueError, match=match):
            fn(*args)

    bad(5, torch.tensor([0, 2, 0], dtype=torch.int32), r"seq_group entries must be in \[0, 2\)")
    bad(5, grp[:2], "seq_group must be an integer")
    bad(4, torch.tensor([-1, 4], dtype=torch.int32), "prefix_lens must be >= 0")
    bad(4, torch.tensor([0, 4], dtype=torch.int32), "every sequence needs at least one token")
    bad(4, pl[:1], "prefix_lens must be an integer")
    bad(3, pt.float(), "prefix_tables must be an integer")
    broken = pt.clone()
    broken[1, 0] = -1
    bad(3, broken, r"prefix_tables\[1, 0\] = -1")
    bad(7, torch.tensor([0, 5, -1], dtype=torch.int32), "suffix_lens must be >= 0")
    bad(6, st[:, :0], "longer than its suffix_tables row")
