"""benchmarks/kernels.py: the no-GPU path checks correctness and says no timing was taken; the
timed path's record arithmetic, driven here by a fake timer (no GPU in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
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
    progress = [json.loads(line) for line in lines[:-1]]  # one before each case, naming it
    summary = json.loads(lines[-1])
    assert len(progress) == summary["cases"] == summary["planned"] >= 8
    assert [p["cases"] for p in progress] == list(range(len(progress)))
    assert all(not p["complete"] and not p["all_ok"] and p["running"] for p in progress)
    assert summary["timed"] is False and summary["all_ok"] is True and summary["complete"] is True
    assert summary["failed"] == [] and "running" not in summary and summary["torch_device"] == "cpu"
    assert "no timing" in summary["note"]
    kernels = {r["kernel"] for r in summary["results"]}
    assert kernels == {"prm_score", "topk_prune", "paged_attention", "shared_prefix_attention"}
    assert all("triton_us" not in r and "error" not in r for r in summary["results"])
    shared = [r for r in summary["results"] if r["kernel"] == "shared_prefix_attention"]
    assert all(r["paged_triton_unshared_ok"] for r in shared)


def _failing_specs(bench: ModuleType) -> list:
    """A case whose inputs cannot be built, one whose kernel raises, and one that is fine."""
    cpu = torch.device("cpu")

    def no_memory() -> object:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    def raising() -> object:
        case = bench.topk_case(3, 12, cpu)

        def boom(*a: object, **k: object) -> object:
            raise AssertionError("a broken kernel")

        case.triton = boom
        return case

    return [bench.Spec("paged_attention", "paged_case(huge)", no_memory), bench.Spec("topk_prune", "topk(raises)", raising),
            bench.spec(bench.topk_case, 2, 8, cpu)]


def test_a_failing_case_is_recorded_and_the_others_still_run(
        bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(bench, "cpu_cases", lambda: _failing_specs(bench))
    out = tmp_path / "kernels.json"
    assert bench.main(["--json", "--device", "cpu", "--out", str(out)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == json.loads(out.read_text())  # the file holds the final summary too
    assert summary["complete"] and not summary["all_ok"] and summary["cases"] == 3
    built, raised, fine = summary["results"]
    assert built == {"kernel": "paged_attention", "case": "paged_case(huge)", "ok": False, "phase": "build",
                     "error_type": "OutOfMemoryError", "error": "CUDA out of memory. Tried to allocate 8.00 GiB"}
    assert raised["ok"] is False and raised["phase"] == "check" and raised["error_type"] == "AssertionError"
    assert raised["error"] == "a broken kernel" and raised["case"].startswith("Q=3")
    assert fine["ok"] is True and "error" not in fine
    assert summary["failed"] == ["paged_attention paged_case(huge)", f"topk_prune {raised['case']}"]
    # the human table shows them too, and its last line is the same summary
    assert bench.main(["--device", "cpu"]) == 1
    table = capsys.readouterr().out.strip().splitlines()
    assert json.loads(table[-1])["failed"] == summary["failed"]
    assert any("OutOfMemoryError: CUDA out of memory" in row for row in table)
    assert any("AssertionError: a broken kernel" in row for row in table)


def test_a_killed_run_leaves_a_parsable_last_line(tmp_path: Path) -> None:
    """The second case kills its own process (as a time limit's SIGKILL would): what was printed
    and written before must still parse, naming the case done and the one that was running."""
    out = tmp_path / "kernels.json"
    script = (
        "import os, signal, sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from bench_utils import load_bench\n"
        "b = load_bench('kernels')\n"
        "def die(): os.kill(os.getpid(), signal.SIGKILL)\n"
        "b.cpu_cases = lambda: [b.spec(b.topk_case, 2, 8, torch.device('cpu')), b.Spec('prm_score', 'dies', die),"
        " b.spec(b.topk_case, 3, 8, torch.device('cpu'))]\n"
        f"sys.exit(b.main(['--json', '--device', 'cpu', '--out', {str(out)!r}]))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TRITON_INTERPRET="1"))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    last = load_bench("gpu_check").last_json(p.stdout)  # as gpu_check reads a section's output
    assert last is not None and last == json.loads(out.read_text())
    assert last["complete"] is False and last["all_ok"] is False and last["cases"] == 1 and last["planned"] == 3
    assert last["results"][0]["ok"] is True and last["running"] == "prm_score dies"


def test_the_device_is_validated(bench: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.resolve_device("cpu") == torch.device("cpu")
    for bad, message in [("mps", "cuda, cuda:N, or cpu"), ("nonsense", "not a device name")]:
        with pytest.raises(ValueError, match=message):
            bench.resolve_device(bad)
    if not torch.cuda.is_available():
        assert bench.resolve_device(None) == torch.device("cpu")
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--device", "cuda:1"])
        assert exit_.value.code == 2 and "--device cuda:1: torch sees no CUDA device" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert bench.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert bench.resolve_device("cuda") == bench.resolve_device(None) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"no such CUDA device; torch sees 2 \(cuda:0 to cuda:1\)"):
        bench.resolve_device("cuda:2")


def test_the_gpu_grid_is_bf16_first_with_some_fp16(bench: ModuleType) -> None:
    """Built lazily: listing the GPU cases allocates nothing (and needs no GPU)."""
    for quick, large in [(False, True), (True, False)]:
        specs = bench.gpu_cases(quick, torch.device("cpu"), large=large)
        floats = [s for s in specs if s.kernel != "topk_prune"]
        dtypes = [s.label.split(", ")[-1].rstrip(")") for s in floats]
        n16 = dtypes.count("float16")
        assert set(dtypes) == {"bfloat16", "float16"} and dtypes == ["bfloat16"] * (len(dtypes) - n16) + ["float16"] * n16
        assert {s.kernel for s in specs if "float16" in s.label and "bfloat16" not in s.label} == {
            "prm_score", "paged_attention", "shared_prefix_attention"}
    assert len(bench.gpu_cases(False, torch.device("cpu"), large=True)) > len(bench.gpu_cases(False, torch.device("cpu")))


def test_bf16_tolerance(bench: ModuleType) -> None:
    """Two bfloat16 ulps (the kernels round p and the output to 16 bits; the references do not)
    agree; a 5 % error does not; float16 stays at 1e-2."""
    case = bench.Case("paged_attention", "x", (), lambda: None, lambda: None, 0.0)
    want = torch.linspace(-4, 4, 101)
    for dtype, ok_rel, bad_rel in [(torch.bfloat16, 2 * 2**-7, 0.05), (torch.float16, 2 * 2**-10, 0.02)]:
        w = want.to(dtype)
        assert bench._agree(case, (w.float() * (1 + ok_rel)).to(dtype), w)
        assert not bench._agree(case, (w.float() * (1 + bad_rel)).to(dtype), w)


def test_a_timing_failure_keeps_the_check(bench: ModuleType) -> None:
    case = bench.topk_case(3, 12, torch.device("cpu"))

    def timer(fn: object) -> float:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    rec = bench.run_case(case, timer)
    assert rec["ok"] is False and rec["phase"] == "time" and rec["max_abs_err"] == 0.0
    assert rec["error_type"] == "RuntimeError" and "illegal memory access" in rec["error"]


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
