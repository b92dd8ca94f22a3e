"""The dispatch switch: PONDER_KERNELS picks Triton or the reference per call, CPU tensors get the
reference under ``auto``, and a compiled kernel refuses CPU tensors with a useful message."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ponder.kernels as K
from ponder.kernels import dispatch, ops


def _prm_args() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(5, 12, generator=g), torch.tensor([4, 0, 2]), torch.randn(2, 12, generator=g),
            torch.rand(3, generator=g), torch.tensor([0, 1, 2], dtype=torch.int32))


def _topk_args() -> tuple[torch.Tensor, ...]:
    return torch.tensor([0.1, 0.9, 0.5, 0.5, 0.2]), torch.tensor([0, 3, 5]), torch.tensor([2, 5]), torch.arange(5)


def _attn_args() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(6, 16, 1, 64, generator=g), torch.randn(6, 16, 1, 64, generator=g)
    return torch.randn(2, 3, 64, generator=g), k, v, torch.tensor([[0, 1], [2, 3]]), torch.tensor([20, 5])


def _shared_args() -> tuple[torch.Tensor, ...]:
    q, k, v, _, _ = _attn_args()
    return (q, k, v, torch.tensor([[4, 5]]), torch.tensor([17]), torch.tensor([0, 0]),
            torch.tensor([[0, 1], [2, 3]]), torch.tensor([0, 18]))


CALLS = [
    ("prm_score", K.prm_score, _prm_args),
    ("topk_prune", K.topk_prune, _topk_args),
    ("paged_attention", K.paged_attention, _attn_args),
    ("shared_prefix_attention", K.shared_prefix_attention, _shared_args),
]


@pytest.mark.parametrize("value,want", [("", "auto"), ("auto", "auto"), (" Triton ", "triton"), ("REFERENCE", "reference")])
def test_mode_parses_the_switch(monkeypatch: pytest.MonkeyPatch, value: str, want: str) -> None:
    monkeypatch.setenv("PONDER_KERNELS", value)
    assert dispatch.mode() == want


def test_bad_switch_value_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_KERNELS", "cuda")
    with pytest.raises(ValueError, match="PONDER_KERNELS must be one of"):
        K.prm_score(*_prm_args())


@pytest.mark.parametrize("setting,triton_runs", [(None, False), ("auto", False), ("reference", False), ("triton", True)])
@pytest.mark.parametrize("name,op,make", CALLS)
def test_switch_routes_each_op(monkeypatch: pytest.MonkeyPatch, name: str, op: Any, make: Any,
                               setting: str | None, triton_runs: bool) -> None:
    if setting is None:
        monkeypatch.delenv("PONDER_KERNELS", raising=False)
    else:
        monkeypatch.setenv("PONDER_KERNELS", setting)
    calls: list[str] = []
    real_t, real_r = ops.TRITON[name], ops.REFERENCE[name]
    monkeypatch.setitem(ops.TRITON, name, lambda *a, **k: calls.append("triton") or real_t(*a, **k))
    monkeypatch.setitem(ops.REFERENCE, name, lambda *a, **k: calls.append("reference") or real_r(*a, **k))
    got = op(*make())
    assert calls == ["triton" if triton_runs else "reference"]
    want = real_r(*make())
    for x, y in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=2e-5)


def test_forced_triton_runs_the_interpreted_kernels() -> None:
    """Under TRITON_INTERPRET=1 (tests/conftest.py) every registered launcher is interpreted."""
    from ponder.kernels.paged_attention import _paged_attention_kernel, _prefix_attention_kernel
    from ponder.kernels.prm_score import _prm_score_kernel
    from ponder.kernels.topk_prune import _topk_prune_kernel

    for kernel in (_paged_attention_kernel, _prefix_attention_kernel, _prm_score_kernel, _topk_prune_kernel):
        assert dispatch.is_interpreted(kernel)
    assert set(ops.TRITON) == set(ops.REFERENCE) == {name for name, _, _ in CALLS}


def test_compiled_kernel_refuses_cpu_tensors() -> None:
    class Compiled:  # stands in for a kernel defined without TRITON_INTERPRET
        pass

    with pytest.raises(ValueError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        dispatch.check_launchable("op", Compiled(), torch.zeros(2))


def test_next_pow2() -> None:
    assert [dispatch.next_pow2(n) for n in (0, 1, 2, 3, 16, 17, 896)] == [1, 1, 2, 4, 16, 32, 1024]


def test_forcing_triton_without_the_interpreter_explains_the_fix() -> None:
    """A fresh process without TRITON_INTERPRET compiles the kernels for a GPU; CPU tensors then
    get a ValueError naming the switch, not a driver error from inside Triton."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PONDER_KERNELS"] = "triton"
    code = (
        "import torch, ponder.kernels as K\n"
        "try:\n"
        "    K.topk_prune(torch.tensor([1.0]), torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0]))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ValueError: topk_prune: the compiled Triton kernel needs CUDA tensors" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("name,op,make", CALLS)
def test_validate_false_skips_only_the_syncing_checks(name: str, op: Any, make: Any) -> None:
    """validate=False (for callers that built the tables themselves) gives the same results on
    good inputs, through the ops and both implementations; shape/dtype checks still run."""
    for impl in (ops.TRITON[name], ops.REFERENCE[name], op):
        got, want = impl(*make(), validate=False), ops.REFERENCE[name](*make())
        for x, y in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(x, y, atol=2e-5, rtol=2e-5)
        bad = list(make())
        bad[0] = bad[0][None]  # one dimension too many: caught without reading any values
        with pytest.raises(ValueError, match=name.split("_attention")[0] if "attention" in name else name):
            impl(*bad, validate=False)


def test_validate_false_does_not_read_values() -> None:
    """The value checks are what validate=False turns off: a row id past hidden passes the
    check (and would be read out of bounds, which is why the default validates)."""
    from ponder.kernels.prm_score import check_prm_score_args

    hidden, rows, head, prev, n_prev = _prm_args()
    bad_rows = torch.tensor([4, 0, 99])
    check_prm_score_args(hidden, bad_rows, head, prev, n_prev, "last", values=False)
    with pytest.raises(ValueError, match="rows must index"):
        check_prm_score_args(hidden, bad_rows, head, prev, n_prev, "last")
