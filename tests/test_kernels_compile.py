"""The kernels compile for a real GPU (sm_90, H100/H200) without one: Triton's own front end and
the ptxas it ships turn each kernel, at the launch configurations the launchers choose, into a
cubin, and ``ptxas -v`` reports registers and spills. The interpreter tests check arithmetic;
this checks what the interpreter cannot: tl.dot shape limits, constexpr plumbing, dtypes that
only exist on the GPU (bf16), register pressure.

The compile runs in a child process without TRITON_INTERPRET (the kernels are interpreted in
this one). One configuration per kernel runs by default (~15 s); the full matrix is slow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

_I32 = "i32"


def _i32(*names: str) -> dict[str, str]:
    return {n: _I32 for n in names}


def _attn_base(dt: str) -> dict[str, str]:
    return {"q_ptr": f"*{dt}", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "qk_scale": "fp32",
            **_i32("G", "D", "stride_qs", "stride_qh", "stride_kb", "stride_kt", "stride_kh",
                   "stride_vb", "stride_vt", "stride_vh", "stride_os", "stride_oh", "stride_ls")}


def configs(full: bool) -> list[tuple[str, dict[str, str], dict[str, Any], int]]:
    """(kernel name, argument types, constexprs, num_warps) as the launchers would pick them."""
    from ponder.kernels.paged_attention import _block_g, _block_n, _dot_precision, _prefix_config
    import torch

    out: list[tuple[str, dict[str, str], dict[str, Any], int]] = []
    dts = [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)] if full else [("fp16", torch.float16)]
    for dt, _ in dts:
        for two, mode in ([(False, 0), (True, 1), (False, 2), (True, 3)] if full else [(True, 3)]):
            types = {"hidden_ptr": f"*{dt}", "rows_ptr": "*i64", "head_ptr": f"*{dt}", "prev_ptr": "*fp32",
                     "nprev_ptr": "*i32", "score_ptr": "*fp32", "agg_ptr": "*fp32", "bias": "fp32",
                     **_i32("B", "D", "stride_hidden", "stride_rows", "stride_head", "stride_prev", "stride_nprev")}
            out.append(("_prm_score_kernel", types, {"TWO_ROW": two, "MODE": mode, "BLOCK_B": 16, "BLOCK_D": 256}, 4))
    for sdt in (["fp32", "fp16"] if full else ["fp32"]):
        types = {"scores_ptr": f"*{sdt}", "offsets_ptr": "*i64", "k_ptr": "*i64", "parents_ptr": "*i64",
                 "out_offsets_ptr": "*i64", "kept_ptr": "*i64", "kept_parents_ptr": "*i64",
                 **_i32("stride_scores", "stride_k", "stride_parents")}
        out.append(("_topk_prune_kernel", types, {"BLOCK_I": 64, "BLOCK_J": 64}, 4))
    geoms = [(16, 64, 7), (32, 128, 8), (16, 128, 1), (32, 64, 3), (12, 64, 2)] if full else [(32, 128, 8)]
    for dt, tdt in dts:
        for BS, D, G in geoms:
            prec = _dot_precision(tdt)
            paged = dict(_attn_base(dt), bt_ptr="*i32", lens_ptr="*i32", out_ptr=f"*{dt}", pre_out_ptr="*fp32",
                         pre_lse_ptr="*fp32", **_i32("stride_bts", "stride_btb", "stride_lens"))
            for has_prefix in (False, True):
                out.append(("_paged_attention_kernel", paged, {"HAS_PREFIX": has_prefix, "BLOCK_SIZE": BS,
                            "BLOCK_N": _block_n(None, None, tdt), "BLOCK_G": _block_g(G), "BLOCK_D": D, "DOT_PRECISION": prec}, 4))
            prefix = dict(_attn_base(dt), pt_ptr="*i32", plens_ptr="*i32", members_ptr="*i64", group_off_ptr="*i64",
                          out_ptr="*fp32", lse_ptr="*fp32", **_i32("stride_ptg", "stride_ptb", "stride_plens"))
            GP, block_m, warps = _prefix_config(G, 64, D, tdt)
            out.append(("_prefix_attention_kernel", prefix, {"BLOCK_SIZE": BS, "BLOCK_N": _block_n(None, None, tdt), "GP": GP, "BLOCK_M": block_m,
                        "BLOCK_D": D, "DOT_PRECISION": prec}, warps))
    return out


# arguments that are usually 1 or odd at run time; the rest get Triton's 16-divisibility hint,
# as the JIT would give them for real tensors (aligned pointers, strides of 64/128-wide heads)
_NO_DIV = {"G", "D", "B", "bias", "qk_scale", "stride_btb", "stride_lens", "stride_ptb", "stride_plens", "stride_ls",
           "stride_bts", "stride_ptg", "stride_rows", "stride_prev", "stride_nprev", "stride_scores", "stride_k",
           "stride_parents", "stride_head"}


def compile_all(full: bool) -> list[dict[str, Any]]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as tcompile

    import ponder.kernels.ops  # noqa: F401  (imports every kernel module)

    mods = [sys.modules[f"ponder.kernels.{m}"] for m in ("paged_attention", "prm_score", "topk_prune")]
    kernels = {name: getattr(m, name) for m in mods for name in dir(m) if name.endswith("_kernel")}
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
    results = []
    for name, types, consts, warps in configs(full):
        kernel = kernels[name]
        sig = {n: ("constexpr" if n in consts else types[n]) for n in kernel.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
                 if n in types and n not in _NO_DIV}
        compiled = tcompile(ASTSource(kernel, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps})
        with tempfile.TemporaryDirectory() as d:
            ptx = Path(d) / "k.ptx"
            ptx.write_text(compiled.asm["ptx"])
            r = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", str(ptx), "-o", str(Path(d) / "k.o")],
                               capture_output=True, text=True)
        regs = re.search(r"Used (\d+) registers", r.stderr)
        spills = re.search(r"(\d+) bytes spill stores", r.stderr)
        results.append({"kernel": name, "consts": consts, "types": {k: v for k, v in types.items() if "ptr" in k},
                        "num_warps": warps, "cubin": len(compiled.asm["cubin"]), "ptxas_rc": r.returncode,
                        "registers": int(regs.group(1)) if regs else None,
                        "spill_bytes": int(spills.group(1)) if spills else None})
    return results


def _run(full: bool) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    with tempfile.TemporaryDirectory(prefix="ponder-triton-aot-") as cache:
        env["TRITON_CACHE_DIR"] = cache  # a cold cache: every configuration really compiles
        r = subprocess.run([sys.executable, __file__, "--full" if full else "--one"], env=env, capture_output=True,
                           text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ptxas_present() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell").exists()


def _check(results: list[dict[str, Any]]) -> None:
    assert {r["kernel"] for r in results} == {"_prm_score_kernel", "_topk_prune_kernel", "_paged_attention_kernel",
                                              "_prefix_attention_kernel"}
    for r in results:
        assert r["cubin"] > 0 and r["ptxas_rc"] == 0, r
        assert r["spill_bytes"] == 0, f"register spills: {r}"
        assert r["registers"] is not None and r["registers"] <= 255, r


@pytest.mark.skipif(not _ptxas_present(), reason="Triton's bundled ptxas is missing")
def test_each_kernel_compiles_for_sm90_without_spills() -> None:
    _check(_run(full=False))


@pytest.mark.slow
@pytest.mark.skipif(not _ptxas_present(), reason="Triton's bundled ptxas is missing")
def test_every_launch_configuration_compiles_for_sm90_without_spills(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("~1 min of compiling: run with -m slow")
    results = _run(full=True)
    _check(results)
    for r in results:
        print(r["kernel"], r["consts"], r["types"], "warps", r["num_warps"], "registers", r["registers"])


if __name__ == "__main__":
    assert "TRITON_INTERPRET" not in os.environ, "compile without the interpreter"
    print(json.dumps(compile_all(full="--full" in sys.argv)))
