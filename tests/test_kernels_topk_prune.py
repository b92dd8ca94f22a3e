"""Segmented top-k pruning: the reference against a naive loop, the Triton kernel (interpreter)
against the reference (exact equality: the outputs are indices), and the argument checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from ponder.kernels.topk_prune import topk_prune_reference, topk_prune_triton

tp = importlib.import_module("ponder.kernels.topk_prune")  # the package shadows the module name


def _case(lens: list[int], ks: list[int], seed: int = 0, dtype: torch.dtype = torch.float32, levels: int = 0):
    """Scores for segments of the given lengths; ``levels`` > 0 draws from few values (many ties)."""
    g = torch.Generator().manual_seed(seed)
    C = sum(lens)
    if levels:
        scores = torch.randint(0, levels, (C,), generator=g).float() / levels
    else:
        scores = torch.rand(C, generator=g)
    offsets = torch.tensor([0, *torch.tensor(lens, dtype=torch.long).cumsum(0).tolist()], dtype=torch.long)
    parents = torch.randint(0, 1000, (C,), generator=g)
    return scores.to(dtype), offsets, torch.tensor(ks, dtype=torch.long), parents


def _naive(scores, offsets, k, parents):
    kept, outs = [], [0]
    for q in range(k.numel()):
        lo, hi = int(offsets[q]), int(offsets[q + 1])
        vals = [float(x) for x in scores[lo:hi].float()]
        # descending, ties to the lower index, NaN after every number
        order = sorted(range(hi - lo), key=lambda i: (math.isnan(vals[i]), -vals[i] if not math.isnan(vals[i]) else 0.0, i))
        take = order[: int(k[q])]
        kept += [lo + i for i in take]
        outs.append(outs[-1] + len(take))
    kept_t = torch.tensor(kept, dtype=torch.long)
    return kept_t, parents[kept_t] if kept else torch.empty(0, dtype=torch.long), torch.tensor(outs)


def _assert_same(a, b) -> None:
    for x, y, name in zip(a, b, ("kept", "kept_parents", "out_offsets")):
        assert x.dtype == y.dtype == torch.long, name
        assert torch.equal(x, y), f"{name}: {x.tolist()} != {y.tolist()}"


CASES = [
    ([1], [1]),  # one candidate
    ([5], [9]),  # k > segment keeps it all
    ([0, 3, 0], [2, 2, 5]),  # empty segments
    ([7, 1, 13, 4], [3, 1, 0, 4]),  # odd sizes, k = 0, k = len
    ([70, 33, 129], [64, 5, 100]),  # segments past one 64-wide tile
    ([300], [17]),  # past one interpreter tile (256)
]


@pytest.mark.parametrize("lens,ks", CASES)
def test_reference_matches_naive_loop(lens: list[int], ks: list[int]) -> None:
    args = _case(lens, ks, seed=len(lens), levels=5)
    _assert_same(topk_prune_reference(*args), _naive(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("levels", [0, 3])
@pytest.mark.parametrize("lens,ks", CASES)
def test_triton_matches_reference(lens: list[int], ks: list[int], levels: int, dtype: torch.dtype) -> None:
    args = _case(lens, ks, seed=sum(lens), dtype=dtype, levels=levels)
    _assert_same(topk_prune_triton(*args), topk_prune_reference(*args))


def test_triton_gpu_tiles_in_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 x 64 GPU tiles: several programs per segment, several j-tiles per program."""
    monkeypatch.setattr(tp, "is_interpreted", lambda _k: False)
    args = _case([150, 0, 65, 3], [140, 2, 64, 1], seed=9, levels=7)
    _assert_same(topk_prune_triton(*args), topk_prune_reference(*args))


def test_all_equal_scores_keep_lowest_indices() -> None:
    scores, offsets, k = torch.full((10,), 0.5), torch.tensor([0, 4, 10]), torch.tensor([2, 3])
    parents = torch.arange(10) * 10
    kept, par, out = topk_prune_triton(scores, offsets, k, parents)
    assert kept.tolist() == [0, 1, 4, 5, 6] and par.tolist() == [0, 10, 40, 50, 60] and out.tolist() == [0, 2, 5]
    _assert_same((kept, par, out), topk_prune_reference(scores, offsets, k, parents))


def test_nan_and_inf_order_like_the_reference() -> None:
    scores = torch.tensor([float("nan"), 0.2, float("-inf"), float("inf"), float("nan"), 0.2, -0.0, 0.0])
    offsets, parents = torch.tensor([0, 8]), torch.arange(8)
    for kk in range(9):
        args = (scores, offsets, torch.tensor([kk]), parents)
        _assert_same(topk_prune_triton(*args), topk_prune_reference(*args))
        _assert_same(topk_prune_reference(*args), _naive(*args))
    assert topk_prune_triton(scores, offsets, torch.tensor([8]), parents)[0].tolist() == [3, 1, 5, 6, 7, 2, 0, 4]


def test_int32_and_strided_inputs() -> None:
    scores, offsets, k, parents = _case([6, 0, 9], [2, 1, 4], seed=4, levels=4)
    wide = torch.stack([scores, torch.zeros_like(scores)], 1)[:, 0]  # stride 2
    args = (wide, offsets.int(), k.int()[::1], parents.int())
    _assert_same(topk_prune_triton(*args), topk_prune_reference(*args))


def test_no_questions_and_nothing_kept() -> None:
    empty = torch.empty(0)
    r = topk_prune_triton(empty, torch.tensor([0]), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert [t.tolist() for t in r] == [[], [], [0]]
    args = _case([3, 4], [0, 0])
    r = topk_prune_triton(*args)
    assert [t.tolist() for t in r] == [[], [], [0, 0, 0]]
    _assert_same(r, topk_prune_reference(*args))


def _ok():
    return _case([3, 2], [1, 1])


@pytest.mark.parametrize("fn", [topk_prune_reference, topk_prune_triton])
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][None], *a[1:]), "scores must be a 1-D float"),
        (lambda a: (a[0].long(), *a[1:]), "scores must be a 1-D float"),
        (lambda a: (a[0], a[1].float(), a[2], a[3]), "offsets must be a 1-D integer"),
        (lambda a: (a[0], torch.tensor([1, 3, 5]), a[2], a[3]), "offsets must start at 0"),
        (lambda a: (a[0], torch.tensor([0, 3, 4]), a[2], a[3]), "end at len"),
        (lambda a: (a[0], torch.tensor([0, 4, 3, 5]), torch.tensor([1, 1, 1]), a[3]), "never decrease"),
        (lambda a: (a[0], a[1], torch.tensor([1]), a[3]), "k must be an integer tensor of shape"),
        (lambda a: (a[0], a[1], torch.tensor([1, -1]), a[3]), "k must be >= 0"),
        (lambda a: (a[0], a[1], a[2], a[3][:4]), "parents must be integers shaped like scores"),
    ],
)
def test_bad_arguments_raise(fn, mutate, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*mutate(_ok()))


def test_launcher_rejects_strided_offsets_and_bf16() -> None:
    scores, offsets, k, parents = _ok()
    strided = torch.stack([offsets, offsets], 1)[:, 0]
    with pytest.raises(ValueError, match="offsets must be contiguous"):
        topk_prune_triton(scores, strided, k, parents)
    with pytest.raises(ValueError, match="bfloat16"):
        topk_prune_triton(scores.bfloat16(), offsets, k, parents)
