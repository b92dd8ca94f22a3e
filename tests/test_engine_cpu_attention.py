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
