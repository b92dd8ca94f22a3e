"""Kernel benchmark: each Triton kernel against its PyTorch reference on the same inputs.

On a CUDA machine: realistic sizes (1-256 questions x 4-64 beams, hidden sizes 896-3584,
contexts 512-4096 with shared prefixes), median µs of each side (triton.testing.do_bench),
achieved GB/s (and TFLOP/s for attention) and the speed-up, plus the Triton time with
``validate=False`` (no value checks, so no host syncs); every case is also checked for
agreement. Without a GPU: the same checks at small sizes with the Triton kernels running in
the interpreter, and no timing at all (interpreter times say nothing about a GPU).

    python benchmarks/kernels.py [--quick] [--json]      (also: ponder bench kernels)

The last printed line is one JSON object; ``--json`` prints only that line. Exit status 1 when
a Triton result disagrees with its reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_GPU = torch.cuda.is_available()
if not _GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first ponder.kernels import

from ponder.kernels import dispatch  # noqa: E402
from ponder.kernels.paged_attention import (  # noqa: E402
    _paged_attention_kernel,
    paged_attention_reference,
    paged_attention_triton,
    shared_prefix_attention_reference,
    shared_prefix_attention_triton,
)
from ponder.kernels.prm_score import prm_score_reference, prm_score_triton  # noqa: E402
from ponder.kernels.topk_prune import topk_prune_reference, topk_prune_triton  # noqa: E402

# (H_q, H_kv, head_dim) of real decoder geometries
GEOMETRIES = {"qwen2.5-0.5b": (14, 2, 64), "qwen2.5-1.5b": (12, 2, 128), "llama-3-8b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}


@dataclass
class Case:
    kernel: str
    label: str
    args: tuple[Any, ...]
    triton: Callable[..., Any]
    reference: Callable[..., Any]
    bytes: float  # minimum DRAM traffic of the op
    flops: float = 0.0
    exact: bool = False  # integer outputs must match exactly
    extra: dict[str, Callable[[], Any]] | None = None  # other timed variants, by name


def _gen(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def prm_case(Q: int, beams: int, D: int, two_row: bool, dtype: torch.dtype, dev: torch.device, seed: int = 0) -> Case:
    g = _gen(seed, dev)
    B = Q * beams
    R = 2 * B  # packed rows of this tick; half of them end a step
    hidden = torch.randn(R, D, generator=g, device=dev).to(dtype) / D**0.5  # (R, D)
    rows = torch.randperm(R, generator=g, device=dev)[:B]  # (B,)
    head = torch.randn((2, D) if two_row else (D,), generator=g, device=dev).to(dtype)
    prev = torch.rand(B, generator=g, device=dev)
    n_prev = torch.randint(0, 5, (B,), generator=g, device=dev, dtype=torch.int32)
    es = hidden.element_size()
    nbytes = B * D * es + head.numel() * es + B * (8 + 4 + 4) + B * 8
    label = f"Q={Q} beams={beams} D={D} head={'2xD' if two_row else 'D'} {str(dtype)[6:]}"
    return Case("prm_score", label, (hidden, rows, head, prev, n_prev, "min"), prm_score_triton, prm_score_reference,
                nbytes, flops=2.0 * B * D)


def topk_case(Q: int, seg: int, dev: torch.device, seed: int = 0) -> Case:
    g = _gen(seed, dev)
    lens = torch.randint(seg // 2, seg + 1, (Q,), generator=g, device=dev)
    if Q > 2:
        lens[1] = 0  # a finished question: empty segment
    offsets = torch.zeros(Q + 1, dtype=torch.long, device=dev)
    torch.cumsum(lens, 0, out=offsets[1:])
    C = int(offsets[-1])
    scores = (torch.randint(0, 64, (C,), generator=g, device=dev).float() / 64)  # many ties
    k = torch.randint(1, max(seg // 2, 1) + 1, (Q,), generator=g, device=dev)  # adaptive per question
    parents = torch.randint(0, max(C, 1), (C,), generator=g, device=dev)
    K = int(torch.minimum(k, lens).sum())
    return Case("topk_prune", f"Q={Q} seg<={seg} C={C} K={K}", (scores, offsets, k, parents),
                topk_prune_triton, topk_prune_reference, C * (4 + 8) + K * 16 + Q * 16, exact=True)


def _cache(NB: int, BS: int, Hkv: int, D: int, dtype: torch.dtype, dev: torch.device, g: torch.Generator):
    k = torch.randn(NB, BS, Hkv, D, generator=g, device=dev).to(dtype)  # (NB, BS, H_kv, D)
    v = torch.randn(NB, BS, Hkv, D, generator=g, device=dev).to(dtype)
    return k, v


def paged_case(Q: int, beams: int, ctx: int, geom: str, BS: int, dtype: torch.dtype, dev: torch.device,
               seed: int = 0) -> Case:
    g = _gen(seed, dev)
    Hq, Hkv, D = GEOMETRIES[geom]
    S = Q * beams
    lens = torch.randint(ctx // 2, ctx + 1, (S,), generator=g, device=dev, dtype=torch.int32)
    nb = -(-ctx // BS)
    NB = S * nb
    k, v = _cache(NB, BS, Hkv, D, dtype, dev, g)
    tables = torch.randperm(NB, generator=g, device=dev).to(torch.int32).reshape(S, nb)  # fragmented cache
    q = torch.randn(S, Hq, D, generator=g, device=dev).to(dtype)
    es = q.element_size()
    tokens = float(lens.sum())
    nbytes = tokens * Hkv * D * 2 * es + 2 * q.numel() * es + tables.numel() * 4
    return Case("paged_attention", f"S={Q}x{beams} ctx<={ctx} {geom} bs={BS} {str(dtype)[6:]}",
                (q, k, v, tables, lens), paged_attention_triton, paged_attention_reference,
                nbytes, flops=4.0 * tokens * Hq * D)


def shared_case(Q: int, beams: int, prefix: int, suffix: int, geom: str, BS: int, dtype: torch.dtype,
                dev: torch.device, seed: int = 0) -> Case:
    """Q groups (questions) of ``beams`` sequences sharing a ``prefix``-token prompt + own suffix."""
    assert prefix % BS == 0, "prefix tables are concatenated with suffix tables for the unshared path"
    g = _gen(seed, dev)
    Hq, Hkv, D = GEOMETRIES[geom]
    S = Q * beams
    npb, nsb = prefix // BS, -(-suffix // BS)
    NB = Q * npb + S * nsb
    k, v = _cache(NB, BS, Hkv, D, dtype, dev, g)
    perm = torch.randperm(NB, generator=g, device=dev).to(torch.int32)
    prefix_tables = perm[: Q * npb].reshape(Q, npb)
    suffix_tables = perm[Q * npb:].reshape(S, nsb)
    prefix_lens = torch.full((Q,), prefix, dtype=torch.int32, device=dev)
    suffix_lens = torch.randint(1, suffix + 1, (S,), generator=g, device=dev, dtype=torch.int32)
    seq_group = torch.arange(Q, device=dev, dtype=torch.int32).repeat_interleave(beams)
    q = torch.randn(S, Hq, D, generator=g, device=dev).to(dtype)
    es = q.element_size()
    unique = Q * prefix + float(suffix_lens.sum())  # tokens the shared path must read
    nbytes = unique * Hkv * D * 2 * es + 2 * q.numel() * es
    # the same attention without sharing: every sequence reads its whole prefix itself
    full_tables = torch.cat([prefix_tables[seq_group.long()], suffix_tables], 1)
    full_lens = prefix + suffix_lens
    args = (q, k, v, prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens)
    flops = 4.0 * (S * prefix + float(suffix_lens.sum())) * Hq * D
    return Case("shared_prefix_attention", f"{Q} groups x {beams} prefix={prefix} suffix<={suffix} {geom} bs={BS} {str(dtype)[6:]}",
                args, shared_prefix_attention_triton, shared_prefix_attention_reference, nbytes, flops=flops,
                extra={"paged_triton_unshared": lambda: paged_attention_triton(q, k, v, full_tables, full_lens)})


def gpu_cases(quick: bool) -> list[Case]:
    dev, h = torch.device("cuda"), torch.float16
    cases = [
        prm_case(1, 4, 896, False, h, dev), prm_case(16, 16, 1536, False, h, dev),
        prm_case(64, 64, 2048, True, h, dev), prm_case(256, 64, 3584, False, h, dev),
        topk_case(1, 16, dev), topk_case(16, 64, dev), topk_case(256, 64, dev), topk_case(256, 256, dev),
        paged_case(1, 4, 512, "qwen2.5-0.5b", 16, h, dev), paged_case(16, 16, 1024, "qwen2.5-1.5b", 16, h, dev),
        paged_case(64, 16, 2048, "qwen2.5-1.5b", 32, h, dev), paged_case(4, 64, 4096, "llama-3-8b", 16, h, dev),
        shared_case(1, 4, 512, 128, "qwen2.5-0.5b", 16, h, dev), shared_case(16, 16, 1024, 256, "qwen2.5-1.5b", 16, h, dev),
        shared_case(64, 16, 2048, 256, "qwen2.5-1.5b", 32, h, dev), shared_case(16, 64, 4096, 512, "llama-3-8b", 16, h, dev),
        shared_case(256, 64, 512, 64, "qwen2.5-0.5b", 16, h, dev),
    ]
    return [c for i, c in enumerate(cases) if not quick or i % 2 == 0]


def large_cases() -> list[Case]:
    """The far ends: 1,024 beams of one question, 8,192-token contexts, GQA (8 KV heads of 32)."""
    dev, h = torch.device("cuda"), torch.float16
    return [
        prm_case(1, 1024, 2048, False, h, dev), prm_case(16, 1024, 4096, True, h, dev),
        topk_case(1, 1024, dev), topk_case(64, 1024, dev),
        paged_case(1, 1024, 128, "llama-3-8b", 16, h, dev), paged_case(1, 16, 8192, "llama-3-8b", 16, h, dev),
        paged_case(8, 128, 8192, "qwen2.5-1.5b", 32, h, dev),
        shared_case(1, 1024, 4096, 128, "llama-3-8b", 16, h, dev), shared_case(4, 16, 8192, 256, "llama-3-8b", 16, h, dev),
    ]


def cpu_cases() -> list[Case]:
    """Small enough for the interpreter (~1 ms a program), awkward on purpose."""
    dev, f, h = torch.device("cpu"), torch.float32, torch.float16
    return [
        prm_case(2, 3, 96, False, f, dev), prm_case(1, 5, 130, True, h, dev, seed=1),
        topk_case(5, 12, dev), topk_case(3, 70, dev, seed=2),
        paged_case(1, 3, 40, "smollm2-135m", 16, f, dev), paged_case(2, 2, 70, "qwen2.5-1.5b", 32, h, dev, seed=3),
        shared_case(2, 3, 32, 10, "smollm2-135m", 16, f, dev), shared_case(2, 2, 32, 40, "qwen2.5-1.5b", 32, h, dev, seed=4),
    ]


def _flat(x: Any) -> list[torch.Tensor]:
    return list(x) if isinstance(x, tuple) else [x]


def _max_err(a: Any, b: Any) -> float:
    return max((float((x.double() - y.double()).abs().max()) if x.numel() else 0.0) for x, y in zip(_flat(a), _flat(b)))


def _agree(case: Case, a: Any, b: Any) -> bool:
    fa, fb = _flat(a), _flat(b)
    if [x.shape for x in fa] != [y.shape for y in fb]:
        return False
    if case.exact:
        return all(torch.equal(x, y) for x, y in zip(fa, fb))
    low = any(x.dtype in (torch.float16, torch.bfloat16) for x in fa)
    tol = 1e-2 if low else 1e-4
    return all(torch.allclose(x.float(), y.float(), atol=tol, rtol=tol) for x, y in zip(fa, fb))


def gpu_timer(fn: Callable[[], Any]) -> float:
    """Median µs of ``fn`` on the GPU (do_bench flushes L2 between runs)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=60, return_mode="median")) * 1e3


def run_case(case: Case, timer: Callable[[Callable[[], Any]], float] | None) -> dict[str, Any]:
    got = case.triton(*case.args)
    want = case.reference(*case.args)
    rec: dict[str, Any] = {"kernel": case.kernel, "case": case.label, "ok": _agree(case, got, want),
                           "max_abs_err": _max_err(got, want)}
    for name, fn in (case.extra or {}).items():  # another path to the same result must agree too
        rec[f"{name}_ok"] = _agree(case, fn(), want)
        rec["ok"] = rec["ok"] and rec[f"{name}_ok"]
    if timer is None:
        return rec
    t_us = timer(lambda: case.triton(*case.args))
    r_us = timer(lambda: case.reference(*case.args))
    # without the value checks (each a host sync), as an engine that built the tables calls it
    u_us = timer(lambda: case.triton(*case.args, validate=False))
    rec.update(triton_us=round(t_us, 2), reference_us=round(r_us, 2), speedup=round(r_us / t_us, 2),
               triton_unchecked_us=round(u_us, 2), triton_gbps=round(case.bytes / t_us / 1e3, 1),
               triton_unchecked_gbps=round(case.bytes / u_us / 1e3, 1))
    if case.flops and case.kernel.endswith("attention"):
        rec["triton_tflops"] = round(case.flops / t_us / 1e6, 3)
    for name, fn in (case.extra or {}).items():
        x_us = timer(fn)
        rec[f"{name}_us"] = round(x_us, 2)
        rec[f"speedup_vs_{name}"] = round(x_us / t_us, 2)
    return rec


def _table(records: list[dict[str, Any]], timed: bool) -> str:
    cols = ["kernel", "case", "ok", "max_abs_err"] + (
        ["triton_us", "reference_us", "speedup", "triton_unchecked_us", "triton_gbps", "triton_unchecked_gbps",
         "triton_tflops", "speedup_vs_paged_triton_unshared"]
        if timed else [])
    rows = [[str(r.get(c, "")) if not isinstance(r.get(c), float) else f"{r[c]:.3g}" for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ponder bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON summary line")
    ap.add_argument("--quick", action="store_true", help="GPU: every other case")
    ap.add_argument("--large", action="store_true", help="GPU: also beams to 1024 and contexts to 8192 (gpu_check)")
    args = ap.parse_args(argv)
    if not _GPU and not dispatch.is_interpreted(_paged_attention_kernel):
        # ponder.kernels was imported before TRITON_INTERPRET could be set: rerun in a clean process
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.call([sys.executable, os.path.abspath(__file__), *(argv or [])], env=env)
    if _GPU:
        device = torch.cuda.get_device_name(0)
        cases = gpu_cases(args.quick) + (large_cases() if args.large else [])
        records = [run_case(c, gpu_timer) for c in cases]
        note = "median µs from triton.testing.do_bench, fp16 inputs; GB/s = minimum DRAM bytes / Triton time"
    else:
        device = "cpu (Triton interpreter)"
        records = [run_case(c, None) for c in cpu_cases()]
        note = ("no GPU: Triton kernels checked against the references in the interpreter at small "
                "sizes; no timing was taken")
    ok = all(r["ok"] for r in records)
    summary = {"bench": "kernels", "device": device, "timed": _GPU, "all_ok": ok, "cases": len(records),
               "note": note, "results": records}
    if not args.json:
        print(f"kernels on {device}: {note}")
        print(_table(records, _GPU))
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
