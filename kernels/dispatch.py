"""Which implementation runs: Triton for CUDA tensors, the PyTorch reference for CPU tensors.

``PONDER_KERNELS=auto`` (default) picks Triton for CUDA tensors and the reference otherwise;
``PONDER_KERNELS=reference`` forces the references everywhere; ``PONDER_KERNELS=triton`` forces
Triton. On CPU tensors Triton only runs in its interpreter, which is chosen when a kernel is
*defined*: ``TRITON_INTERPRET=1`` must be in the environment before ``ponder.kernels`` is first
imported (tests/conftest.py sets it). Forcing Triton on CPU tensors without it raises a
ValueError naming the fix, rather than failing inside Triton's driver lookup.
"""

from __future__ import annotations

import os
from typing import Any

import torch

_CHOICES = ("auto", "triton", "reference")


def mode() -> str:
    value = os.environ.get("PONDER_KERNELS", "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"PONDER_KERNELS must be one of {_CHOICES}, got {value!r}")
    return value


def use_triton(t: torch.Tensor) -> bool:
    m = mode()
    if m == "reference":
        return False
    if m == "triton":
        return True
    return t.is_cuda


def is_interpreted(kernel: Any) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` function) was defined under TRITON_INTERPRET=1."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def check_launchable(name: str, kernel: Any, *tensors: torch.Tensor) -> None:
    """Raise ValueError unless ``kernel`` can run on these tensors: compiled kernels need CUDA
    tensors; interpreted kernels run on CPU tensors (and on CUDA ones, by copying)."""
    if is_interpreted(kernel):
        if any(t.dtype == torch.bfloat16 for t in tensors):
            raise ValueError(f"{name}: the Triton interpreter has no bfloat16 arithmetic; use float16/float32 on CPU")
        return
    if not all(t.is_cuda for t in tensors):
        raise ValueError(
            f"{name}: the compiled Triton kernel needs CUDA tensors; for CPU tensors set "
            "TRITON_INTERPRET=1 before importing ponder.kernels, or use PONDER_KERNELS=reference"
        )


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1): Triton block shapes must be powers of two."""
    return 1 << max(int(n) - 1, 0).bit_length()
