"""Kernel benchmark: each Triton kernel against its PyTorch reference on the same inputs.

On a CUDA machine: realistic sizes (1-256 questions x 4-64 beams, hidden sizes 896-3584,
contexts 512-4096 with shared prefixes) in bfloat16 (what the engine runs on a GPU), a few of
them again in float16; median µs of each side (triton.testing.do_bench), achieved GB/s (and
TFLOP/s for attention) and the speed-up, plus the Triton time with ``validate=False`` (no value
checks, so no host syncs); every case is also checked for agreement. Without a GPU (or with
``--device cpu``): the same checks at small sizes in float32/float16 with the Triton kernels
running in the interpreter (which has no bfloat16), and no timing at all (interpreter times say
nothing about a GPU).

    python benchmarks/kernels.py [--quick] [--large] [--json] [--device cuda:N|cpu] [--out FILE]
                                                          (also: ponder bench kernels)

A case that fails (out of memory, a Triton compile error, an assertion) is recorded with its
error's type and message, and the other cases still run. The last printed line is one JSON
object, the summary. With ``--json`` only JSON lines are printed: before each case, a progress
summary of the cases done so far (``"complete": false``, ``"running"`` naming the next case),
and last the final summary (``"complete": true``), so a run stopped from outside still ends in
a parsable line. ``--out FILE`` rewrites the latest of these summaries to FILE as the run goes.
Exit status 1 when a case failed or a Triton result disagrees with its reference; 2 on bad
arguments (a ``--device`` that is not there).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


@dataclass
class Spec:
    """A case not built yet: its inputs are allocated when it runs and freed after it, so a case
    whose inputs do not fit fails alone, and the cases never all sit in memory at once."""

    kernel: str
    label: str  # the builder's call, for a case that fails before it has its own label
    build: Callable[[], Case]


_KERNEL_OF = {"prm_case": "prm_score", "topk_case": "topk_prune", "paged_case": "paged_attention",
              "shared_case": "shared_prefix_attention"}


def spec(builder: Callable[..., Case], *args: Any, **kwargs: Any) -> Spec:
    shown = [str(a)[6:] if isinstance(a, torch.dtype) else repr(a) for a in args if not isinstance(a, torch.device)]
    shown += [f"{k}={v!r}" for k, v in kwargs.items()]
    name = builder.__name__
    return Spec(_KERNEL_OF.get(name, name), f"{name}({', '.join(shown)})", functools.partial(builder, *args, **kwargs))


def _grid(d: torch.dtype, dev: torch.device) -> list[Spec]:
    return [
        spec(prm_case, 1, 4, 896, False, d, dev), spec(prm_case, 16, 16, 1536, False, d, dev),
        spec(prm_case, 64, 64, 2048, True, d, dev), spec(prm_case, 256, 64, 3584, False, d, dev),
        spec(topk_case, 1, 16, dev), spec(topk_case, 16, 64, dev), spec(topk_case, 256, 64, dev),
        spec(topk_case, 256, 256, dev),
        spec(paged_case, 1, 4, 512, "qwen2.5-0.5b", 16, d, dev), spec(paged_case, 16, 16, 1024, "qwen2.5-1.5b", 16, d, dev),
        spec(paged_case, 64, 16, 2048, "qwen2.5-1.5b", 32, d, dev), spec(paged_case, 4, 64, 4096, "llama-3-8b", 16, d, dev),
        spec(shared_case, 1, 4, 512, 128, "qwen2.5-0.5b", 16, d, dev),
        spec(shared_case, 16, 16, 1024, 256, "qwen2.5-1.5b", 16, d, dev),
        spec(shared_case, 64, 16, 2048, 256, "qwen2.5-1.5b", 32, d, dev),
        spec(shared_case, 16, 64, 4096, 512, "llama-3-8b", 16, d, dev),
        spec(shared_case, 256, 64, 512, 64, "qwen2.5-0.5b", 16, d, dev),
    ]


def gpu_cases(quick: bool, dev: torch.device | None = None, large: bool = False) -> list[Spec]:
    """bfloat16, the engine's dtype on a GPU, on the whole grid (every other case with ``quick``),
    then the far ends (``large``), then float16 on every fourth case (eighth with ``quick``) that
    has float inputs: most important first, for a run stopped by a time limit."""
    dev = dev or torch.device("cuda")
    step = 2 if quick else 1
    bf16 = [s for i, s in enumerate(_grid(torch.bfloat16, dev)) if i % step == 0]
    fp16 = [s for i, s in enumerate(_grid(torch.float16, dev)) if i % (4 * step) == 0 and s.kernel != "topk_prune"]
    return bf16 + (large_cases(dev) if large else []) + fp16


def large_cases(dev: torch.device | None = None, dtype: torch.dtype = torch.bfloat16) -> list[Spec]:
    """The far ends: 1,024 beams of one question, 8,192-token contexts, GQA (8 KV heads of 32)."""
    dev, d = dev or torch.device("cuda"), dtype
    return [
        spec(prm_case, 1, 1024, 2048, False, d, dev), spec(prm_case, 16, 1024, 4096, True, d, dev),
        spec(topk_case, 1, 1024, dev), spec(topk_case, 64, 1024, dev),
        spec(paged_case, 1, 1024, 128, "llama-3-8b", 16, d, dev), spec(paged_case, 1, 16, 8192, "llama-3-8b", 16, d, dev),
        spec(paged_case, 8, 128, 8192, "qwen2.5-1.5b", 32, d, dev),
        spec(shared_case, 1, 1024, 4096, 128, "llama-3-8b", 16, d, dev),
        spec(shared_case, 4, 16, 8192, 256, "llama-3-8b", 16, d, dev),
    ]


def cpu_cases() -> list[Spec]:
    """Small enough for the interpreter (~1 ms a program), awkward on purpose; float32 and float16
    (the interpreter has no bfloat16 arithmetic)."""
    dev, f, h = torch.device("cpu"), torch.float32, torch.float16
    return [
        spec(prm_case, 2, 3, 96, False, f, dev), spec(prm_case, 1, 5, 130, True, h, dev, seed=1),
        spec(topk_case, 5, 12, dev), spec(topk_case, 3, 70, dev, seed=2),
        spec(paged_case, 1, 3, 40, "smollm2-135m", 16, f, dev), spec(paged_case, 2, 2, 70, "qwen2.5-1.5b", 32, h, dev, seed=3),
        spec(shared_case, 2, 3, 32, 10, "smollm2-135m", 16, f, dev),
        spec(shared_case, 2, 2, 32, 40, "qwen2.5-1.5b", 32, h, dev, seed=4),
    ]


def _flat(x: Any) -> list[torch.Tensor]:
    return list(x) if isinstance(x, tuple) else [x]


def _same_shapes(a: Any, b: Any) -> bool:
    return [x.shape for x in _flat(a)] == [y.shape for y in _flat(b)]


def _max_err(a: Any, b: Any) -> float | None:
    """Largest absolute difference; None when the shapes differ (nothing to compare)."""
    if not _same_shapes(a, b):
        return None
    return max((float((x.double() - y.double()).abs().max()) if x.numel() else 0.0) for x, y in zip(_flat(a), _flat(b)))


# atol = rtol by output dtype. The Triton kernels compute in fp32 like the references but round
# attention's probabilities to the 16-bit dtype for the p @ v dot and the output at the end:
# a disagreement of an ulp or two, 2**-7 relative for bfloat16's 8-bit mantissa (2**-10 fp16).
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2}
FP32_TOLERANCE = 1e-4


def _tolerance(x: Any) -> float:
    return max(TOLERANCE.get(t.dtype, FP32_TOLERANCE) for t in _flat(x))


def _agree(case: Case, a: Any, b: Any) -> bool:
    fa, fb = _flat(a), _flat(b)
    if not _same_shapes(a, b):
        return False
    if case.exact:
        return all(torch.equal(x, y) for x, y in zip(fa, fb))
    tol = _tolerance(a)
    return all(torch.allclose(x.float(), y.float(), atol=tol, rtol=tol) for x, y in zip(fa, fb))


def gpu_timer(fn: Callable[[], Any]) -> float:
    """Median µs of ``fn`` on the current CUDA device (do_bench flushes L2 between runs)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=60, return_mode="median")) * 1e3


def _error(exc: BaseException, limit: int = 1200) -> dict[str, str]:
    """The error's type and message (a Triton compile error's message, the kernel source with
    the failing line, is long: its head and its tail)."""
    msg = str(exc).strip() or repr(exc)
    if len(msg) > limit:
        msg = f"{msg[: limit // 2]} … {msg[-limit // 2:]}"
    return {"error_type": type(exc).__name__, "error": msg}


def run_case(case: Case, timer: Callable[[Callable[[], Any]], float] | None) -> dict[str, Any]:
    """The case's record. An exception (out of memory, a compile error, a failed check) is
    recorded, not raised: ``ok`` false, with ``phase`` (check or time) and the error."""
    rec: dict[str, Any] = {"kernel": case.kernel, "case": case.label, "ok": False}
    phase = "check"
    try:
        got = case.triton(*case.args)
        want = case.reference(*case.args)
        rec.update(ok=_agree(case, got, want), max_abs_err=_max_err(got, want))
        if not case.exact:
            rec["tol"] = _tolerance(got)
        for name, fn in (case.extra or {}).items():  # another path to the same result must agree too
            rec[f"{name}_ok"] = _agree(case, fn(), want)
            rec["ok"] = rec["ok"] and rec[f"{name}_ok"]
        del got, want
        if timer is None:
            return rec
        phase = "time"
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
    except Exception as exc:  # recorded, not fatal: the other cases still run
        rec.update(ok=False, phase=phase, **_error(exc))
    return rec


def run_spec(s: Spec, timer: Callable[[Callable[[], Any]], float] | None) -> dict[str, Any]:
    """Build the case (its inputs), run it, free it; a case that cannot be built is recorded
    like one that fails (``phase`` build)."""
    try:
        case = s.build()
    except Exception as exc:
        rec: dict[str, Any] = {"kernel": s.kernel, "case": s.label, "ok": False, "phase": "build", **_error(exc)}
    else:
        rec = run_case(case, timer)
        del case
    if not rec["ok"] and torch.cuda.is_initialized():
        # after an out-of-memory error, hand the cached blocks back before the next case (the
        # exception and the frames holding its tensors are gone by now); a CUDA error that
        # poisoned the context raises here too: the next cases will record it themselves
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
    return rec


def _table(records: list[dict[str, Any]], timed: bool) -> str:
    cols = ["kernel", "case", "ok", "max_abs_err"] + (
        ["triton_us", "reference_us", "speedup", "triton_unchecked_us", "triton_gbps", "triton_unchecked_gbps",
         "triton_tflops", "speedup_vs_paged_triton_unshared"]
        if timed else [])
    if any("error" in r for r in records):
        cols.append("error")
    def cell(r: dict[str, Any], c: str) -> str:
        if c == "error" and "error" in r:
            return f"{r['error_type']}: {r['error']}".replace("\n", " ")
        return f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))

    rows = [[cell(r, c) for c in cols] for r in records]
    rows = [[v if len(v) <= 100 else v[:99] + "…" for v in row] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def resolve_device(name: str | None) -> torch.device:
    """``--device``: cpu (the interpreter), cuda or cuda:N; None: cuda:0 when torch sees a CUDA
    device, else cpu. ValueError for a device that is not there."""
    if name is None:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r}: not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"--device {name}: the kernels run on cuda, cuda:N, or cpu (in the Triton interpreter)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"--device {name}: torch sees no CUDA device (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    index = 0 if dev.index is None else dev.index
    if not 0 <= index < count:
        raise ValueError(f"--device {name}: no such CUDA device; torch sees {count} (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def _write(path: Path, line: str) -> None:
    """Replace ``path`` whole (a reader never sees half a summary)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(line + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        print(f"kernels: cannot write {path}: {exc}", file=sys.stderr, flush=True)


_REEXEC = "PONDER_KERNELS_REEXEC"  # set in the rerun: never rerun twice


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ponder bench kernels", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", action="store_true",
                    help="print only JSON lines: a progress summary before each case, the final summary last")
    ap.add_argument("--quick", action="store_true", help="GPU: every other case")
    ap.add_argument("--large", action="store_true", help="GPU: also beams to 1024 and contexts to 8192 (gpu_check)")
    ap.add_argument("--device", default=None,
                    help="cuda, cuda:N, or cpu (small cases in the Triton interpreter, untimed); "
                         "default: cuda:0 when torch sees a CUDA device, else cpu")
    ap.add_argument("--out", type=Path, default=None, help="also keep the latest summary in this file, rewritten as cases finish")
    args = ap.parse_args(argv)
    try:
        dev = resolve_device(args.device)
    except ValueError as exc:
        ap.error(str(exc))
    gpu = dev.type == "cuda"
    if gpu == dispatch.is_interpreted(_paged_attention_kernel):
        # ponder.kernels was imported in the other Triton mode (TRITON_INTERPRET is read at its
        # import): rerun in a clean process with the mode this device needs
        if os.environ.get(_REEXEC):
            ap.error(f"--device {dev}: cannot run the Triton kernels {'compiled' if gpu else 'in the interpreter'} "
                     f"(TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r})")
        env = dict(os.environ, **{_REEXEC: "1"})
        if gpu:
            env.pop("TRITON_INTERPRET", None)
        else:
            env["TRITON_INTERPRET"] = "1"
        rest = sys.argv[1:] if argv is None else argv
        return subprocess.call([sys.executable, os.path.abspath(__file__), *rest], env=env)
    if gpu:
        torch.cuda.set_device(dev)  # do_bench's events and L2 flush, and Triton's launches, use the current device
        name = torch.cuda.get_device_name(dev)
        specs = gpu_cases(args.quick, dev, large=args.large)
        timer: Callable[[Callable[[], Any]], float] | None = gpu_timer
        tols = ", ".join(f"{str(d)[6:]} {t:g}" for d, t in TOLERANCE.items())
        note = (f"median µs from triton.testing.do_bench; bfloat16 inputs (the engine's dtype on a GPU), a few cases "
                f"also float16 (each label ends with its dtype); agreement within atol = rtol of {tols}; "
                "GB/s = minimum DRAM bytes / Triton time")
    else:
        name = "cpu (Triton interpreter)"
        specs, timer = cpu_cases(), None
        note = ("no GPU: Triton kernels checked against the references in the interpreter at small "
                "sizes; no timing was taken")
    records: list[dict[str, Any]] = []

    def summary(running: Spec | None) -> dict[str, Any]:
        failed = [f"{r['kernel']} {r['case']}" for r in records if not r["ok"]]
        out: dict[str, Any] = {
            "bench": "kernels", "device": name, "torch_device": str(dev), "timed": gpu,
            "complete": running is None, "all_ok": running is None and not failed,
            "cases": len(records), "planned": len(specs), "failed": failed, "note": note, "results": records}
        if running is not None:
            out["running"] = f"{running.kernel} {running.label}"
        return out

    for i, s in enumerate(specs):
        line = json.dumps(summary(s))
        if args.out:
            _write(args.out, line)
        if args.json:
            print(line, flush=True)  # flushed: a pipe's buffer would die with a killed run
        else:
            print(f"[{i + 1}/{len(specs)}] {s.kernel} {s.label} …", file=sys.stderr, flush=True)
        records.append(run_spec(s, timer))
    final = summary(None)
    line = json.dumps(final)
    if args.out:
        _write(args.out, line)
    if not args.json:
        print(f"kernels on {name}: {note}")
        print(_table(records, gpu))
    print(line, flush=True)
    return 0 if final["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
