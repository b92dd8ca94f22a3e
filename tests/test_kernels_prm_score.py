"""Fused PRM scoring: the reference against a naive loop, the Triton kernel (interpreter) against
the reference over awkward shapes, and the launcher's argument checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from ponder.kernels.prm_score import MODES, prm_score_reference, prm_score_triton

# the package re-exports the op under the module's name, so fetch the module itself
prm = importlib.import_module("ponder.kernels.prm_score")

TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float16: dict(atol=1e-5, rtol=1e-4)}


def _inputs(R: int, D: int, B: int, two_row: bool, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(R, D, generator=g) / math.sqrt(D)).to(dtype)  # (R, D) logits ~ N(0, 1)
    rows = torch.randint(0, R, (B,), generator=g)
    head = torch.randn((2, D) if two_row else (D,), generator=g).to(dtype)
    prev = torch.rand(B, generator=g)
    n_prev = torch.randint(0, 4, (B,), generator=g, dtype=torch.int32)
    return hidden, rows, head, prev, n_prev


def _naive(hidden, rows, head, prev, n_prev, mode, bias):
    scores, aggs = [], []
    for b in range(rows.shape[0]):
        h = hidden[int(rows[b])].double().tolist()
        w = head.double()
        w = (w if w.dim() == 1 else w[0] - w[1]).tolist()
        logit = sum(x * y for x, y in zip(h, w)) + bias
        s = 1.0 / (1.0 + math.exp(-logit))
        n, p = int(n_prev[b]), float(prev[b])
        if n <= 0 or mode == "last":
            a = s
        elif mode == "min":
            a = min(p, s)
        elif mode == "prod":
            a = p * s
        else:
            a = (p * n + s) / (n + 1)
        scores.append(s)
        aggs.append(a)
    return torch.tensor(scores), torch.tensor(aggs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("two_row", [False, True])
def test_reference_matches_naive_loop(mode: str, two_row: bool) -> None:
    args = _inputs(9, 13, 7, two_row, torch.float32, seed=1)
    n_prev = args[4].clone()
    n_prev[0] = 0  # a beam's first step ignores its stale aggregate
    args = (*args[:4], n_prev)
    s, a = prm_score_reference(*args, mode=mode, bias=-0.25)
    ns, na = _naive(*args, mode, -0.25)
    torch.testing.assert_close(s.double(), ns.double(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.double(), na.double(), atol=1e-6, rtol=1e-6)
    assert s.dtype == a.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("two_row", [False, True])
@pytest.mark.parametrize(
    "R,D,B",
    [(1, 1, 1), (1, 64, 1), (5, 7, 3), (37, 896, 19), (3, 1500, 70), (64, 257, 64)],
)
def test_triton_matches_reference(R: int, D: int, B: int, two_row: bool, dtype: torch.dtype) -> None:
    args = _inputs(R, D, B, two_row, dtype, seed=R * 1000 + D)
    for mode in MODES:
        rs, ra = prm_score_reference(*args, mode=mode, bias=0.3)
        ts, ta = prm_score_triton(*args, mode=mode, bias=0.3)
        assert ts.dtype == ta.dtype == torch.float32 and ts.shape == (B,)
        torch.testing.assert_close(ts, rs, **TOL[dtype])
        torch.testing.assert_close(ta, ra, **TOL[dtype])


def test_triton_gpu_tiles_in_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU tile sizes (16 beams x 256 features) take other code paths in the loops."""
    monkeypatch.setattr(prm, "is_interpreted", lambda _k: False)
    args = _inputs(40, 600, 33, True, torch.float32, seed=3)
    for mode in MODES:
        torch.testing.assert_close(prm_score_triton(*args, mode=mode), prm_score_reference(*args, mode=mode), **TOL[torch.float32])


def test_triton_strided_inputs_and_mixed_head_dtype() -> None:
    g = torch.Generator().manual_seed(5)
    big = torch.randn(20, 3, 50, generator=g).to(torch.float16)
    hidden = big[:, 1, :]  # (20, 50), row stride 150
    rows = torch.arange(0, 20, 2)[::2]  # non-unit stride
    head = torch.randn(50, generator=g)  # fp32 head on fp16 hidden
    prev = torch.rand(10, generator=g)[::2]
    n_prev = torch.ones(10, dtype=torch.int64)[::2]
    for mode in MODES:
        torch.testing.assert_close(
            prm_score_triton(hidden, rows, head, prev, n_prev, mode),
            prm_score_reference(hidden, rows, head, prev, n_prev, mode),
            **TOL[torch.float16],
        )


def test_triton_empty_batch() -> None:
    hidden, _, head, _, _ = _inputs(4, 8, 1, False, torch.float32)
    e = torch.empty(0, dtype=torch.long)
    s, a = prm_score_triton(hidden, e, head, torch.empty(0), torch.empty(0, dtype=torch.int32))
    assert s.shape == a.shape == (0,)


def test_extreme_logits_saturate_without_nan() -> None:
    hidden = torch.tensor([[100.0], [-100.0], [0.0]])
    head = torch.tensor([10.0])
    args = (hidden, torch.tensor([0, 1, 2]), head, torch.ones(3), torch.ones(3, dtype=torch.int32))
    s, a = prm_score_triton(*args, mode="prod")
    assert torch.equal(s, torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(a, prm_score_reference(*args, mode="prod")[1])


def _ok():
    return _inputs(6, 16, 4, False, torch.float32)


@pytest.mark.parametrize("fn", [prm_score_reference, prm_score_triton])
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][None],) + a[1:], "hidden must be"),
        (lambda a: (a[0], a[1], torch.randn(15), a[3], a[4]), "head must be"),
        (lambda a: (a[0], a[1], torch.randn(3, 16), a[3], a[4]), "head must be"),
        (lambda a: (a[0], a[1].float(), a[2], a[3], a[4]), "rows must be"),
        (lambda a: (a[0], torch.tensor([0, 1, 2, 6]), a[2], a[3], a[4]), "rows must index"),
        (lambda a: (a[0], torch.tensor([0, -1, 2, 3]), a[2], a[3], a[4]), "rows must index"),
        (lambda a: (a[0], a[1], a[2], a[3].half(), a[4]), "prev_agg must be float32"),
        (lambda a: (a[0], a[1], a[2], a[3][:3], a[4]), "prev_agg and n_prev must be"),
        (lambda a: (a[0], a[1], a[2], a[3], a[4].float()), "n_prev must be an integer"),
        (lambda a: (a[0].long(), *a[1:]), "hidden must be a float"),
        (lambda a: (a[0], a[1], a[2].long(), a[3], a[4]), "head must be a float"),
    ],
)
def test_bad_arguments_raise(fn, mutate, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*mutate(_ok()))


def test_bad_mode_raises() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        prm_score_triton(*_ok(), mode="max")


def test_launcher_rejects_layouts_the_kernel_cannot_read() -> None:
    hidden, rows, head, prev, n_prev = _ok()
    with pytest.raises(ValueError, match="hidden must be contiguous along D"):
        prm_score_triton(torch.randn(16, 6).t(), rows, head, prev, n_prev)
    with pytest.raises(ValueError, match="head must be contiguous along D"):
        prm_score_triton(hidden, rows, torch.randn(16, 2).t(), prev, n_prev)
    with pytest.raises(ValueError, match="bfloat16"):
        prm_score_triton(hidden.bfloat16(), rows, head, prev, n_prev)
