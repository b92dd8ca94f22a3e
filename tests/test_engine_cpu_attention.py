"""The engine's CPU decode attention against the kernels' PyTorch references (same contract)."""

from __future__ import annotations

import pytest
import torch

from ponder.kernels.paged_attention import paged_attention_reference, shared_prefix_attention_reference
from ponder.workers.engine.cpu_attention import shared_prefix_attention_cpu

SHAPES = [  # S, H_q, H_kv, D, block_size
    (1, 1, 1, 8, 1),
    (5, 6, 2, 16, 3),
    (7, 9, 3, 64, 16),
    (4, 8, 8, 32, 4),
    (6, 4, 1, 24, 5),
]


def setup(S: int, Hq: int, Hkv: int, D: int, BS: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    NB = 64
    k = torch.randn((NB, BS, Hkv, D), generator=g).to(dtype)  # stale finite data everywhere
    v = torch.randn((NB, BS, Hkv, D), generator=g).to(dtype)
    q = torch.randn((S, Hq, D), generator=g).to(dtype)
    perm = torch.randperm(NB, generator=g)
    return g, k, v, q, perm


@pytest.mark.parametrize("shape", SHAPES)
def test_paged_matches_the_reference(shape: tuple[int, ...]) -> None:
    S, Hq, Hkv, D, BS = shape
    g, k, v, q, perm = setup(S, Hq, Hkv, D, BS, torch.float32, 0)
    lens = torch.randint(1, 4 * BS + 3, (S,), generator=g)
    nb = int((lens.max() + BS - 1) // BS)
    tables = perm[: S * nb].view(S, nb).int()
    want = paged_attention_reference(q, k, v, tables, lens.int(), scale=0.3)
    got = shared_prefix_attention_cpu(q, k, v, None, None, None, tables, lens.int(), 0.3)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_matches_the_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Groups of unequal size and prefix length, an empty-prefix group, empty suffixes."""
    S, Hq, Hkv, D, BS = shape
    g, k, v, q, perm = setup(S, Hq, Hkv, D, BS, dtype, 1)
    n_groups = 3
    prefix_lens = torch.tensor([0, BS, 3 * BS])[:n_groups]  # group 0: no prefix
    seq_group = torch.randint(0, n_groups, (S,), generator=g)
    suffix_lens = torch.randint(0, 2 * BS + 2, (S,), generator=g)
    suffix_lens = torch.where(prefix_lens[seq_group] + suffix_lens == 0, torch.ones_like(suffix_lens), suffix_lens)
    prefix_tables = perm[: 3 * n_groups].view(n_groups, 3).int()
    nbs = max(1, int((suffix_lens.max() + BS - 1) // BS))
    suffix_tables = perm[3 * n_groups : 3 * n_groups + S * nbs].view(S, nbs).int()
    args = (q, k, v, prefix_tables, prefix_lens.int(), seq_group.int(), suffix_tables, suffix_lens.int())
    want = shared_prefix_attention_reference(*args, scale=D**-0.5).float()
    got = shared_prefix_attention_cpu(*args, D**-0.5)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got.float() - want).abs().max().item() <= tol


def test_one_group_for_all_rows_and_long_prefix() -> None:
    """The sampling job's shape: every row under one prompt, private suffixes of equal length."""
    g, k, v, q, perm = setup(16, 9, 3, 64, 16, torch.float32, 2)
    prefix_tables = perm[:5].view(1, 5).int()
    suffix_tables = perm[5:5 + 16 * 2].view(16, 2).int()
    args = (q, k, v, prefix_tables, torch.tensor([80]).int(), torch.zeros(16).int(), suffix_tables, torch.full((16,), 21).int())
    want = shared_prefix_attention_reference(*args, scale=0.125)
    assert (shared_prefix_attention_cpu(*args, 0.125) - want).abs().max().item() <= 1e-5


# -- the in-place path (one query per kv head, fp32 caches) and its edge cases ----------------


def _spy_in_place(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls that take the in-place path."""
    from ponder.workers.engine import cpu_attention

    calls: list[int] = []
    real = cpu_attention._attend_in_place

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_attention, "_attend_in_place", spy)
    return calls


def _shared_case(S: int, Hq: int, Hkv: int, D: int, BS: int, prefix_lens: list[int], seq_group: list[int],
                 suffix_lens: list[int], seed: int = 3):
    g, k, v, q, perm = setup(S, Hq, Hkv, D, BS, torch.float32, seed)
    nbp = max(1, max((n + BS - 1) // BS for n in prefix_lens))
    G = len(prefix_lens)
    prefix_tables = perm[: G * nbp].view(G, nbp).int()
    nbs = max(1, max((n + BS - 1) // BS for n in suffix_lens))
    suffix_tables = perm[G * nbp : G * nbp + S * nbs].view(S, nbs).int()
    return (q, k, v, prefix_tables, torch.tensor(prefix_lens).int(), torch.tensor(seq_group).int(), suffix_tables,
            torch.tensor(suffix_lens).int())


@pytest.mark.parametrize(
    "case",
    [
        # rows of length 1, no prefix anywhere (paged attention's first decode step)
        dict(prefix_lens=[0], seq_group=[0, 0, 0, 0], suffix_lens=[1, 1, 1, 1]),
        # rows sharing a prefix whose own suffix is empty, one token, or several blocks
        dict(prefix_lens=[0, 32], seq_group=[1, 1, 1, 1], suffix_lens=[0, 1, 16, 37]),
        # rows without a prefix next to rows with one, unequal groups and prefix lengths
        dict(prefix_lens=[0, 16, 48], seq_group=[0, 1, 2, 2, 0, 1, 2], suffix_lens=[5, 0, 1, 33, 17, 16, 2]),
    ],
)
@pytest.mark.parametrize("heads", [(8, 8, 32), (4, 4, 16)])  # arith's shape and a smaller one
def test_in_place_path_edge_cases(case: dict, heads: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    Hq, Hkv, D = heads
    calls = _spy_in_place(monkeypatch)
    args = _shared_case(len(case["seq_group"]), Hq, Hkv, D, 16, case["prefix_lens"], case["seq_group"],
                        case["suffix_lens"])
    want = shared_prefix_attention_reference(*args, scale=D**-0.5)
    got = shared_prefix_attention_cpu(*args, D**-0.5)
    assert calls, "fp32 caches with one query per kv head take the in-place path"
    assert (got - want).abs().max().item() <= 1e-5


def test_in_place_paged_rows_of_length_one_and_long(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_in_place(monkeypatch)
    g, k, v, q, perm = setup(6, 8, 8, 32, 16, torch.float32, 4)
    lens = torch.tensor([1, 1, 16, 17, 100, 3]).int()
    tables = perm[: 6 * 7].view(6, 7).int()
    want = paged_attention_reference(q, k, v, tables, lens, scale=0.2)
    got = shared_prefix_attention_cpu(q, k, v, None, None, None, tables, lens, 0.2)
    assert calls and (got - want).abs().max().item() <= 1e-5


def test_one_plan_serves_every_layer() -> None:
    """The engine builds the plan (and the in-place bookkeeping) once per step, on the first
    layer, and reuses it for the others: each layer's caches must still give its own result."""
    from ponder.workers.engine.cpu_attention import attend, make_plan

    args = _shared_case(5, 8, 8, 32, 16, [0, 32], [1, 1, 0, 1, 0], [3, 20, 7, 0, 49])
    q, k, v, pt, pl, sg, st, sl = args
    plan = make_plan(16, pt, pl, sg, st, sl)
    for layer in range(3):
        g = torch.Generator().manual_seed(10 + layer)
        kl, vl = torch.randn(k.shape, generator=g), torch.randn(v.shape, generator=g)
        ql = torch.randn(q.shape, generator=g)
        want = shared_prefix_attention_reference(ql, kl, vl, pt, pl, sg, st, sl, scale=0.17)
        assert (attend(ql, kl, vl, plan, 0.17) - want).abs().max().item() <= 1e-5
    assert plan.flat is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gqa_smollm2_shape(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2's heads (9 query heads over 3 kv heads, D 64): G > 1 keeps the bmm path."""
    calls = _spy_in_place(monkeypatch)
    q, k, v, pt, pl, sg, st, sl = _shared_case(
        6, 9, 3, 64, 16, [0, 80, 32], [1, 1, 1, 2, 0, 2], [1, 0, 21, 40, 5, 16], seed=5
    )
    args = (q.to(dtype), k.to(dtype), v.to(dtype), pt, pl, sg, st, sl)
    want = shared_prefix_attention_reference(*args, scale=0.125).float()
    got = shared_prefix_attention_cpu(*args, 0.125)
    assert not calls and got.dtype == dtype
    assert (got.float() - want).abs().max().item() <= (1e-5 if dtype == torch.float32 else 2e-2)
