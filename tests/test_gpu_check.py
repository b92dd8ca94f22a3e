"""benchmarks/gpu_check.py must work the first time a GPU is available: here its argument
parsing, its JSON summary and its CPU fallbacks (the same sections at toy sizes) are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_utils import BENCHMARKS, load_bench


@pytest.mark.parametrize("argv, message", [
    (["--sections", "env,warp"], "unknown section"),
    (["--device", "cpu", "--dtype", "float16"], "needs a CUDA device"),
    (["--dtype", "int8"], "invalid choice"),
])
def test_bad_arguments_exit_2(argv: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), *argv], capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr


def test_every_section_runs_on_the_cpu_at_toy_sizes(tmp_path: Path) -> None:
    from tiny_models import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny", "llama")
    target = tmp_path / "gpu_check.json"
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(target),
         "--engine-models", f"{tiny},llama-1b"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == json.loads(target.read_text())
    assert summary["all_ok"] and set(summary["sections"]) == {"env", "kernels", "engine", "service"}
    assert summary["sections"]["env"]["result"]["torch"]
    kernels = summary["sections"]["kernels"]["result"]
    assert kernels["all_ok"] and kernels["cases"] >= 8 and {r["kernel"] for r in kernels["results"]} == {
        "prm_score", "topk_prune", "paged_attention", "shared_prefix_attention"}
    engine = summary["sections"]["engine"]
    assert set(engine) == {str(tiny), "llama-1b"}
    for r in engine.values():  # both sides ran the same jobs: the ratios exist
        assert r["rc"] == 0 and r["summary"]["sampling_ratio"] > 0 and r["summary"]["tree_ratio"] > 0
    assert summary["sections"]["service"]["answered"]


def test_a_failing_section_is_reported_not_raised() -> None:
    gc = load_bench("gpu_check")
    r = gc.run([sys.executable, "-c", "import sys; print('{\"x\": 1}'); sys.exit(3)"], timeout=30)
    assert r["rc"] == 3 and r["result"] == {"x": 1} and "x" in r["tail"]
    r = gc.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert r["rc"] == "timeout"
    assert not gc.ok("kernels", {"rc": 0, "result": {"all_ok": False}})
    assert not gc.ok("engine", {"smollm2": {"rc": 0}, "llama-1b": {"rc": "setup"}})
