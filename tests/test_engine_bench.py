"""The engine benchmark's smoke run: --quick on a tiny model, both sides, one JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_utils import load_bench


def test_quick_benchmark_on_a_tiny_model(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("engine")
    rc = bench.main(["--quick", "--json", "--model", str(tiny_llama_dir), "--block-size", "4"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])  # the last line is the JSON object
    a, b, kv, g = res["sampling"], res["tree"], res["kv"], res["gemm"]
    assert a["ours_tokens"] == a["hf_tokens"] == 8 * 16  # same job: 8 samples x 16 tokens
    assert a["ours_tok_s"] > 0 and a["hf_tok_s"] > 0 and a["ratio"] == pytest.approx(a["ours_tok_s"] / a["hf_tok_s"])
    # Same beam search on both backends: same seed, same probe verifier, so the same tree.
    assert b["ours_usage"]["decode_tokens"] == b["hf_usage"]["decode_tokens"] > 0
    assert b["ours_usage"]["prompt_tokens"] < b["hf_usage"]["prompt_tokens"]  # HF re-encodes
    # 8 beams over a 40-token prompt, block 4: 10 shared prompt blocks + 1 own block per beam.
    assert kv["fraction"] == pytest.approx((10 + 8) * 4 / (8 * 41))
    assert g["limit_tok_s"] > 0 and 0 < g["fraction"] and "met" not in res and res["device"] == "cpu"
