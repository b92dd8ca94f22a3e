"""Which implementation runs: Triton for CUDA tensors, the PyTorch reference for CPU tensors.

``PONDER_KERNELS=reference`` forces the references everywhere; ``PONDER_KERNELS=triton`` forces
Triton (on CPU tensors this needs ``TRITON_INTERPRET=1`` set before the kernels are imported).
"""

from __future__ import annotations

import os

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
