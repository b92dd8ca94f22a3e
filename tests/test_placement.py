"""--device and --dtype: checked against the machine before a model loads, and followed by the
engine, the plain-transformers backend, a separate PRM and the search loop's own tensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.workers.runtime import build_policy, build_verifier, resolve_placement

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama-placement"), "llama", ponder_json={"step_delimiter": "e"})


def test_placement_resolves_auto_and_refuses_what_the_machine_lacks() -> None:
    assert resolve_placement("cpu", "auto") == ("cpu", "auto")  # decided by the backend when it loads (auto_dtype)
    assert resolve_placement("CPU", "bf16") == ("cpu", "bfloat16")
    assert resolve_placement("auto", "auto") == (("cuda:0", "bfloat16") if CUDA else ("cpu", "auto"))
    bad = [("gpu", "auto", "device"), ("mps", "auto", "device"), ("cpu", "int8", "dtype"),
           ("cpu", "float16", "dtype"), ("cuda:7", "auto", "device")]
    if not CUDA:
        bad.append(("cuda", "auto", "device"))
    for device, dtype, field in bad:
        with pytest.raises(InvalidArgument) as info:
            resolve_placement(device, dtype)
        assert info.value.field == field, (device, dtype, info.value)


@pytest.mark.parametrize("argv", [
    ["worker", "--redis", "redis://127.0.0.1:1/0", "--device", "cuda:7"],
    ["worker", "--redis", "redis://127.0.0.1:1/0", "--dtype", "fp16"],
    ["serve", "--device", "tpu"],
    ["eval", "--dataset", "arith:test:2", "--dtype", "float16"],
])
def test_bad_placement_flags_exit_2_before_anything_starts(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "ponder.cli.main", *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    field = "dtype" if "--dtype" in argv else "device"
    assert f"INVALID_ARGUMENT: {field}:" in out.stderr
    assert "loading model" not in out.stderr and "Redis" not in out.stderr


def test_dtype_reaches_the_engine_and_the_hf_backend(model_dir: Path) -> None:
    engine = build_policy(str(model_dir), "engine", "cpu", "bfloat16")
    assert (engine.device, engine.dtype) == ("cpu", "bfloat16")
    assert engine.engine.model.embed.dtype == torch.bfloat16
    assert engine.engine.pool.k.dtype == torch.bfloat16
    hf = build_policy(str(model_dir), "hf", "cpu", "bfloat16")
    assert (hf.device, hf.dtype) == ("cpu", "bfloat16")
    assert next(hf.model.parameters()).dtype == torch.bfloat16
    # both still search in bf16 on the CPU
    from ponder.workers.loop import SearchLoop

    for policy in (engine, hf):
        events: list[Any] = []
        loop = SearchLoop(policy, sink=lambda job, evs: events.extend(evs))
        loop.submit("j", SolveConfig("abc", generations=2, max_steps=2, max_step_tokens=6, seed=1))
        while loop.tick():
            pass
        assert events[-1].WhichOneof("kind") == "final", events[-1]


def test_auto_dtype_on_the_cpu_follows_native_bf16(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dtype auto on the CPU: the engine runs bf16 where the CPU has native bf16 instructions,
    float32 elsewhere; transformers always float32 (its fastest on the CPU)."""
    from ponder.workers import models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    engine = build_policy(str(model_dir), "engine", "cpu", "auto")
    assert engine.dtype == "bfloat16" and engine.engine.pool.k.dtype == torch.bfloat16
    assert build_policy(str(model_dir), "hf", "cpu", "auto").dtype == "float32"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)  # bf16 emulated: slower than fp32
    assert build_policy(str(model_dir), "engine", "cpu", "auto").dtype == "float32"
    assert models.auto_dtype("cuda:0") == "bfloat16"


def test_cpu_native_bf16_reads_the_cpu_flags() -> None:
    from ponder.workers.models import native_bf16_in

    head = "processor\t: 0\nmodel name\t: some cpu\n"
    assert native_bf16_in(head + "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert native_bf16_in(head + "flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not native_bf16_in(head + "flags\t\t: fpu sse avx2 fma avx512f\n")  # AVX-512 without bf16
    assert not native_bf16_in(head + "flags\t\t: fpu avx512_bf16x\n")  # whole flags only
    assert not native_bf16_in(head)  # no flags line (another architecture's layout)
    assert not native_bf16_in("")


def test_the_loop_and_a_separate_prm_follow_the_policy_device(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ponder.workers import loop as loop_mod
    from ponder.workers.loop import SearchLoop

    policy = build_policy(str(model_dir), "engine", "cpu", "float32")
    seen: list[Any] = []
    real = loop_mod.topk_prune

    def spy(scores: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, ids: torch.Tensor) -> Any:
        seen.append({t.device for t in (scores, offsets, k, ids)})
        return real(scores, offsets, k, ids)

    monkeypatch.setattr(loop_mod, "topk_prune", spy)
    verifier = build_verifier("random:1", policy)
    events: list[Any] = []
    loop = SearchLoop(policy, verifier, sink=lambda job, evs: events.extend(evs))
    assert loop.device == torch.device(policy.device)
    loop.submit("j", SolveConfig("abc", strategy="beam", generations=4, beam_width=2, max_steps=2,
                                 max_step_tokens=6, seed=1))
    while loop.tick():
        pass
    assert seen and all(devs == {loop.device} for devs in seen)
    assert events[-1].WhichOneof("kind") == "final", events[-1]


def test_a_prm_directory_is_moved_to_a_non_cpu_policy_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_verifier hands a separate PRM the policy's device (checked with a recording stub,
    since this machine has no GPU; gpu_check runs the real thing)."""
    from ponder.workers.prm import load as load_mod

    moved: list[str] = []

    class FakePRM:
        def to(self, device: str) -> FakePRM:
            moved.append(str(device))
            return self

    class GpuPolicy:
        device = "cuda:0"
        hidden_size = 8

    monkeypatch.setattr(load_mod, "load_prm", lambda path, mode="step": FakePRM())
    root = Path(__file__).resolve().parents[1] / "artifacts" / "arith" / "prm"
    load_mod._load(str(root), GpuPolicy())  # type: ignore[arg-type]
    assert moved == ["cuda:0"]
