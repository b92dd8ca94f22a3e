"""benchmarks/gpu_check.py must work the first time a GPU is available: here its argument
parsing, its JSON summary and its CPU fallbacks (the same sections at toy sizes) are checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` ended (a zombie counts: nothing may reap orphans in a container)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.1)
    return False


def test_a_timed_out_section_stops_the_processes_it_started() -> None:
    """subprocess.run's timeout kills only the direct child: `ponder serve`'s workers (holding
    the GPU) and its Redis would outlive the check. The whole process group must go."""
    gc = load_bench("gpu_check")
    child = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
            "print(c.pid, flush=True); time.sleep(60)"
    t0 = time.monotonic()
    r = gc.run([sys.executable, "-c", child], timeout=3)
    assert r["rc"] == "timeout" and time.monotonic() - t0 < 30
    grandchild = int(r["tail"].split()[0])
    try:
        assert _gone(grandchild)
    finally:
        if not _gone(grandchild, 0):
            os.kill(grandchild, signal.SIGKILL)


def test_the_summary_is_strict_json_and_a_gpu_run_must_use_the_gpu() -> None:
    gc = load_bench("gpu_check")
    nan = {"rc": 1, "result": {"max_abs_err": float("nan"), "x": [float("inf"), 1.5]}}
    from ponder.evaluation.curves import json_finite  # what gpu_check writes its summary with

    assert json.loads(json.dumps(json_finite(nan, as_text=True), allow_nan=False))["result"] == {"max_abs_err": "nan", "x": ["inf", 1.5]}
    untimed = {"rc": 0, "result": {"all_ok": True, "timed": False}}  # kernels.py found no CUDA
    assert gc.ok("kernels", untimed) and not gc.ok("kernels", untimed, gpu=True)
    assert not gc.ok("env", {"rc": 0, "result": {"cuda": False}}, gpu=True)
    assert gc.child_env(gc.parse(["--device", "cuda"])) == {"TRITON_INTERPRET": None}


def test_a_section_that_raises_loses_no_other_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gc = load_bench("gpu_check")

    def broken(a: object) -> None:
        raise RuntimeError("no driver")

    monkeypatch.setattr(gc, "section_env", broken)
    monkeypatch.setattr(gc, "section_kernels", lambda a: {"rc": 0, "result": {"all_ok": True, "timed": False}})
    out = tmp_path / "s.json"
    assert gc.main(["--device", "cpu", "--sections", "env,kernels", "--out", str(out)]) == 1
    summary = json.loads(out.read_text())
    assert summary["sections"]["env"] == {"rc": "error", "tail": "RuntimeError: no driver"}
    assert summary["ok"] == {"env": False, "kernels": True}


def test_the_engine_time_limit_covers_building_the_random_llama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model's run uses up its whole limit here: the section still ends on time."""
    gc = load_bench("gpu_check")
    limits: list[float] = []

    def build(root: Path, tokenizer_model: str, quick: bool) -> Path:
        time.sleep(0.3)
        return root / "llama"

    def slow_run(cmd: list[str], timeout: float, env: object = None) -> dict[str, object]:
        limits.append(timeout)
        time.sleep(timeout)
        return {"rc": "timeout", "result": None}

    monkeypatch.setattr(gc, "make_random_llama", build)
    monkeypatch.setattr(gc, "run", slow_run)
    a = gc.parse(["--device", "cpu", "--engine-models", "a,llama-1b,b", "--budget-scale", str(1.5 / gc.BUDGET_S["engine"])])
    t0 = time.monotonic()
    r = gc.section_engine(a, tmp_path)
    assert set(r) == {"a", "llama-1b", "b"} and len(limits) == 3 and min(limits) > 0
    assert time.monotonic() - t0 < 1.5 + 0.2


@pytest.mark.parametrize("device", ["cuda:1", "cpu"])
def test_the_kernels_section_runs_on_the_device_asked_for(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gc = load_bench("gpu_check")
    cmds: list[list[str]] = []

    def fake_run(cmd: list[str], timeout: float, env: object = None) -> dict[str, object]:
        cmds.append(cmd)
        return {"rc": 0, "result": None}

    monkeypatch.setattr(gc, "run", fake_run)
    gc.section_kernels(gc.parse(["--device", device]))
    (cmd,) = cmds
    assert cmd[1].endswith("kernels.py") and cmd[cmd.index("--device") + 1] == device
