"""The engine benchmark's smoke run: --quick on a tiny model, both sides, one JSON line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bench_utils import load_bench


def _log_runs(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Record each job's start (side, tokens per sample or step, steps) and end, and every sync."""
    log: list[tuple[Any, ...]] = []

    def logged(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any) -> Any:
            args = a[-1]
            side = name if name != "tree" else ("ours_tree" if hasattr(a[0], "engine") else "hf_tree")
            sampling = "sampling" in side
            log.append(("start", side, args.new_tokens if sampling else args.step_tokens, args.steps,
                        args.samples if sampling else (args.beams, args.width)))
            out = fn(*a)
            log.append(("end", side))
            return out
        return run

    for name, attr in [("ours_sampling", "run_sampling_engine"), ("hf_sampling", "run_sampling_hf"), ("tree", "run_tree")]:
        monkeypatch.setattr(bench, attr, logged(name, getattr(bench, attr)))
    sync = bench.sync
    monkeypatch.setattr(bench, "sync", lambda device: (log.append(("sync",)), sync(device))[1])
    return log


def test_quick_benchmark_on_a_tiny_model(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench("engine")
    log = _log_runs(bench, monkeypatch)
    rc = bench.main(["--quick", "--json", "--model", str(tiny_llama_dir), "--block-size", "4"])
    assert rc == 0
    # each side's jobs ran once untimed (2 tokens, one step, the same rows) before the timed runs
    starts = [e[1:] for e in log if e[0] == "start"]
    assert starts == [("ours_sampling", 2, 1, 8), ("hf_sampling", 2, 1, 8), ("ours_tree", 2, 1, (8, 2)),
                      ("hf_tree", 2, 1, (8, 2)), ("ours_sampling", 16, 2, 8), ("hf_sampling", 16, 2, 8),
                      ("ours_tree", 8, 2, (8, 2)), ("hf_tree", 8, 2, (8, 2))]
    # every timed job syncs the device before and after its timer (a no-op here, on the CPU)
    ends = [i for i, e in enumerate(log) if e[0] == "end"]
    begins = [i for i, e in enumerate(log) if e[0] == "start"]
    assert all(sum(e == ("sync",) for e in log[b:e]) >= 2 for b, e in zip(begins, ends))
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])  # the last line is the JSON object
    assert res["warmup"]["tokens"] == 2 and res["warmup"]["s"] > 0
    a, b, kv, g = res["sampling"], res["tree"], res["kv"], res["gemm"]
    assert a["ours_tokens"] == a["hf_tokens"] == 8 * 16  # same job: 8 samples x 16 tokens
    assert a["ours_tok_s"] > 0 and a["hf_tok_s"] > 0 and a["ratio"] == pytest.approx(a["ours_tok_s"] / a["hf_tok_s"])
    # Same beam search on both backends: same seed, same probe verifier, so the same tree.
    assert b["ours_usage"]["decode_tokens"] == b["hf_usage"]["decode_tokens"] > 0
    assert b["ours_usage"]["prompt_tokens"] < b["hf_usage"]["prompt_tokens"]  # HF re-encodes
    # 8 beams over a 40-token prompt, block 4: 10 shared prompt blocks + 1 own block per beam.
    assert kv["fraction"] == pytest.approx((10 + 8) * 4 / (8 * 41))
    assert g["limit_tok_s"] > 0 and 0 < g["fraction"] and "met" not in res and res["device"] == "cpu"
    # the default --dtype auto: ours bf16 where the CPU has native bf16, transformers float32
    from ponder.workers.models import cpu_has_native_bf16

    assert (res["dtype"], res["hf_dtype"]) == ("bfloat16" if cpu_has_native_bf16() else "float32", "float32")


def test_each_side_in_its_own_dtype(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--hf-dtype: the engine in bf16 against transformers in fp32 (each side's fastest dtype on
    this CPU), on the same job; a dtype the device cannot run is refused before anything loads."""
    bench = load_bench("engine")
    rc = bench.main(["--quick", "--json", "--model", str(tiny_llama_dir), "--block-size", "4",
                     "--dtype", "bfloat16", "--hf-dtype", "float32", "--warmup-tokens", "0"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "warmup" not in res  # --warmup-tokens 0: none
    assert (res["dtype"], res["hf_dtype"]) == ("bfloat16", "float32")
    assert res["sampling"]["ours_tokens"] == res["sampling"]["hf_tokens"] == 8 * 16
    assert res["tree"]["ours_usage"]["steps"] > 0 and res["tree"]["hf_usage"]["steps"] > 0  # numerics differ: trees may too
    from ponder.proto.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="float16"):
        bench.main(["--quick", "--json", "--model", str(tiny_llama_dir), "--hf-dtype", "float16"])
    with pytest.raises(SystemExit):
        bench.parse(["--warmup-tokens", "-1"])


def test_arith_benchmark_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/arith_engine.py at its smallest: both sides of the arith eval job in one run,
    one JSON line naming each ratio once."""
    bench = load_bench("arith_engine")
    # float32 on both sides, so the answers must agree exactly (the default, auto, runs the
    # engine in bf16 on a CPU with native bf16)
    rc = bench.main(["--quick", "--json", "--questions", "2", "--budget", "2", "--dtype", "float32"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["threads"] == 1 and res["dtype"] == res["hf_dtype"] == "float32" and len(res["loadavg_start"]) == 3
    assert "engine" in res["sides"] and "hf" in res["sides"]
    assert "--verifier confidence " in res["job"]  # the policy's backend is what is timed, not arith's judge
    e, h = res["engine"], res["hf"]
    for side in (e, h):
        assert side["questions"] == 2 and side["failed"] == 0 and side["wall_s"] > 0 and len(side["answers"]) == 2
    assert e["decode_tokens"] == h["decode_tokens"] > 0  # the same job on both sides
    assert res["answers_differing"] == 0
    assert res["speedup"] == pytest.approx(h["wall_s"] / e["wall_s"])
    assert res["gemm_fraction"] == pytest.approx(e["decode_tok_s"] / res["gemm_limit_tok_s"])
    # no booleans or targets among the results (``quick`` is the run's setting)
    assert [k for k, v in res.items() if isinstance(v, bool)] == ["quick"]
    assert not any(isinstance(v, bool) for side in (e, h) for v in side.values())
    assert "targets" not in res and "met" not in res
