"""benchmarks/kernels.py: the no-GPU path checks correctness and says no timing was taken; the
timed path's record arithmetic, driven here by a fake timer (no GPU in CI)."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
import torch
from bench_utils import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("kernels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path runs only without a GPU")
def test_cpu_run_checks_every_kernel_and_takes_no_timing(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[-1])
    assert summary["timed"] is False and summary["all_ok"] is True
    assert "no timing" in summary["note"]
    kernels = {r["kernel"] for r in summary["results"]}
    assert kernels == {"prm_score", "topk_prune", "paged_attention", "shared_prefix_attention"}
    assert all("triton_us" not in r for r in summary["results"])
    shared = [r for r in summary["results"] if r["kernel"] == "shared_prefix_attention"]
    assert all(r["paged_triton_unshared_ok"] for r in shared)


def test_timed_record_arithmetic_with_a_fake_timer(bench: ModuleType) -> None:
    case = bench.shared_case(2, 2, 32, 10, "smollm2-135m", 16, torch.float32, torch.device("cpu"))
    calls: list[int] = []

    def timer(fn) -> float:  # Triton, reference, Triton unchecked, then the unshared paged path
        fn()
        calls.append(1)
        return [10.0, 40.0, 8.0, 25.0][len(calls) - 1]

    rec = bench.run_case(case, timer)
    assert rec["ok"] and rec["triton_us"] == 10.0 and rec["reference_us"] == 40.0 and rec["speedup"] == 4.0
    assert rec["triton_unchecked_us"] == 8.0 and rec["speedup_vs_paged_triton_unshared"] == 2.5
    assert rec["triton_unchecked_gbps"] == round(case.bytes / 8.0 / 1e3, 1)
    assert rec["triton_gbps"] == round(case.bytes / 10.0 / 1e3, 1)
    assert rec["triton_tflops"] == round(case.flops / 10.0 / 1e6, 3)


def test_disagreement_is_reported(bench: ModuleType) -> None:
    case = bench.topk_case(3, 12, torch.device("cpu"))
    case.triton = lambda *a: tuple(t.flip(0) for t in case.reference(*a))
    assert bench.run_case(case, None)["ok"] is False
