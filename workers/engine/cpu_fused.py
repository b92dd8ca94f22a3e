"""The fused CPU decode-attention kernel (``cpu_attention_fused.cpp``): built at first use, once
per process, with ``torch.utils.cpp_extension.load`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``; never inside the
checkout), and called through ``ctypes`` with raw pointers.

One pass per (row, kv head) over the row's prefix blocks and then its suffix blocks, with an
online softmax (a running max, sum and output, rescaled once per block) in fp32: each key and
value is read once, where it lies in the cache. fp32 and bf16 tensors have one entry point
each; bf16 keys and values are widened to fp32 as they are read (exact), the output rounded
to bf16 once. The torch path (``cpu_attention.py``) needs
a gather, a product and a sum for the keys and an ``embedding_bag`` for the values.

Taken by :func:`ponder.workers.engine.cpu_attention.attend` for fp32 and bf16 CPU tensors (any
number of query heads per kv head) when :func:`wanted` says so: at one torch thread by default.
Falls back to the torch path, with one log line, when the environment sets
``PONDER_CPU_ATTENTION=torch`` or when the build fails (no compiler, no ninja, any error). A
cold build takes a few seconds (measured 6 s on this project's 2-core machine with the other
core busy: one source, two CPU variants); later processes load the cached library in ~0.1 s.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

ENV = "PONDER_CPU_ATTENTION"  # "torch": always the torch path; "fused": the kernel if it builds; unset or "auto": the kernel at one torch thread
NAME = "ponder_engine_cpu_attention"
SOURCE = Path(__file__).with_name("cpu_attention_fused.cpp")
COLD_BUILD_S = 6  # what the log line announces (measured: 6 s, one free core)

_lock = threading.Lock()
_tried = False
DTYPES = (torch.float32, torch.bfloat16)  # the kernel's entry points, in _build's order
_fn: dict[torch.dtype, Any] | None = None  # the ctypes function per dtype, once built
_said_env = False

_ERRORS = {1: "a length past its block table", 2: "a block id out of range", 3: "a seq_group out of range",
           4: "H_q not a multiple of H_kv"}


def _build() -> Any:
    from torch.utils import cpp_extension

    build_dir = Path(cpp_extension._get_build_directory(NAME, verbose=False))
    cold = not any(build_dir.glob("*.so"))
    if cold:
        log.info("compiling the fused CPU attention kernel (first use, ~%d s) into %s", COLD_BUILD_S, build_dir)
    t0 = time.perf_counter()
    # -fopenmp: at::parallel_for's OpenMP body is inline in the header (without it the kernel
    # would run on one thread); the library resolves to the libgomp torch already loaded.
    path = cpp_extension.load(
        name=NAME,
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    took = time.perf_counter() - t0
    if cold or took > 1.0:
        log.info("fused CPU attention kernel compiled in %.1f s", took)
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fns = {}
    for dtype, symbol in zip(DTYPES, ("ponder_decode_attention", "ponder_decode_attention_bf16")):
        fn = getattr(lib, symbol)
        fn.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ptr, i64, ptr, ptr, i64, i64, ptr, ptr,
                       ctypes.c_float]
        fn.restype = ctypes.c_int
        fns[dtype] = fn
    return fns


def kernel() -> dict[torch.dtype, Callable[..., int]] | None:
    """The built kernel, one entry point per dtype it takes (fp32, bf16), or None when the
    torch path is to be used (the environment asks for it, or the build failed: logged once)."""
    global _tried, _fn, _said_env
    if os.environ.get(ENV, "auto").strip().lower() == "torch":
        if not _said_env:
            _said_env = True
            log.info("%s=torch: decode attention on the CPU takes the torch path", ENV)
        return None
    if _tried:
        return _fn
    with _lock:
        if not _tried:
            try:
                _fn = _build()
            except Exception as e:  # no compiler, no ninja, a compile error, a load error
                _fn = None
                log.warning("the fused CPU attention kernel could not be built (%s: %s); decode attention on "
                            "the CPU takes the torch path", type(e).__name__, str(e).strip()[-500:])
            _tried = True
    return _fn


def name() -> str:
    """Which implementation fp32 and bf16 CPU decode attention use in this process: "fused-cpp"
    or "torch" (builds the kernel if it was not tried yet)."""
    return "fused-cpp" if kernel() is not None else "torch"


def _reset() -> None:
    """Forget the build (tests)."""
    global _tried, _fn, _said_env
    with _lock:
        _tried, _fn, _said_env = False, None, False


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


def wanted() -> bool:
    """Whether attention should try the kernel in this process now: ``PONDER_CPU_ATTENTION=fused``
    always, ``torch`` never, unset/``auto`` only while torch runs one thread. Measured on the
    2-core machine: at one thread the kernel is faster (the arith eval job 4.65x transformers
    against 3.42x), at two threads slower (the engine policy and artifact tests: 26.7 s against
    17.1 s on the torch path; its OpenMP regions per layer and step cost more than they split),
    and the arith eval runs one thread by default."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode == "torch":
        kernel()  # says once that the environment chose the torch path (builds nothing)
        return False
    return mode == "fused" or torch.get_num_threads() == 1


def usable(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """The kernel's domain: fp32 or bf16 CPU tensors, all of one dtype, caches contiguous (q is
    made contiguous)."""
    return (q.dtype == k_cache.dtype == v_cache.dtype and q.dtype in DTYPES
            and q.device.type == "cpu"
            and k_cache.device.type == "cpu" and k_cache.is_contiguous() and v_cache.is_contiguous()
            and k_cache.shape == v_cache.shape)


def attention(
    fns: dict[torch.dtype, Callable[..., int]],
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    suffix_tables: torch.Tensor,
    suffix_lens: torch.Tensor,
    prefix_tables: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
    seq_group: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """q (S, H_q, D) over the caches (fp32 or bf16, one dtype: :func:`usable`) with the
    contract's tables (int32 or int64) → (S, H_q, D) in that dtype. Index tensors are converted
    to contiguous int32 (no copy when they are)."""
    S, Hq, D = q.shape
    NB, BS, Hkv, Dk = k_cache.shape
    if Dk != D or Hq % Hkv:
        raise ValueError(f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}")
    fn = fns.get(q.dtype)
    if fn is None or not usable(q, k_cache, v_cache):
        raise TypeError(f"fused CPU attention takes fp32 or bf16 CPU tensors of one dtype, not q {q.dtype} on "
                        f"{q.device.type}, caches {k_cache.dtype}/{v_cache.dtype}")
    q = q.contiguous()
    out = torch.empty_like(q)
    st, sl = _i32(suffix_tables), _i32(suffix_lens)
    if st.dim() != 2 or st.shape[0] != S or sl.numel() != S:
        raise ValueError("suffix_tables must be (S, nb) and suffix_lens (S,)")
    if prefix_tables is not None and prefix_lens is not None and seq_group is not None and prefix_tables.numel():
        pt, pl, sg = _i32(prefix_tables), _i32(prefix_lens), _i32(seq_group)
        if pt.dim() != 2 or pl.numel() != pt.shape[0] or sg.numel() != S:
            raise ValueError("prefix_tables must be (G, nb), prefix_lens (G,) and seq_group (S,)")
        Gp, nbp, ptp, plp, sgp = pt.shape[0], pt.shape[1], pt.data_ptr(), pl.data_ptr(), sg.data_ptr()
    else:
        Gp, nbp, ptp, plp, sgp = 0, 0, None, None, None
    err = fn(out.data_ptr(), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), S, Hq, D, NB, BS, Hkv,
             st.data_ptr(), st.shape[1], sl.data_ptr(), ptp, Gp, nbp, plp, sgp, scale)
    if err:
        raise IndexError(f"fused CPU attention: {_ERRORS.get(err, f'error {err}')}")
    return out
