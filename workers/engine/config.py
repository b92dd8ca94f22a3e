"""The engine's one validated configuration, and its typed errors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.proto.errors import InvalidArgument, ResourceExhausted

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class KVCacheExhausted(ResourceExhausted):
    """The paged KV cache has no free block and nothing it may evict.

    Raised before any half-done state is left behind: the sequences of the failed call are
    released, every block held before the call is still held, and the cache stays usable.
    """

    def __init__(self, needed: int, capacity: int, in_use: int) -> None:
        super().__init__(
            f"KV cache exhausted: needed {needed} more block(s), all {in_use} of {capacity} are "
            "referenced by live sequences; release nodes, lower the batch, or raise max_kv_bytes"
        )
        self.needed = needed
        self.capacity = capacity
        self.in_use = in_use


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    try:
        return _DTYPES[value.strip().lower()]
    except KeyError:
        raise InvalidArgument("engine.dtype", f"unknown dtype {value!r}; expected one of {sorted(_DTYPES)}") from None


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs a model.

    ``max_kv_bytes`` caps the paged KV cache (all layers, keys and values); the number of blocks
    is ``max_kv_bytes // bytes_per_block``. Blocks are reserved lazily by the OS (an untouched
    block costs no RAM), so a generous cap is cheap until it is used.
    """

    block_size: int = 16
    max_kv_bytes: int = 2 * 2**30
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    # Decode attention reads a prefix shared by several rows once (shared_prefix_attention)
    # instead of once per row (paged_attention).
    shared_prefix: bool = True
    # Decode attention: "auto" runs our CPU implementation (workers/engine/cpu_attention.py,
    # the kernels' contract in fewer, larger ops) for CPU tensors when PONDER_KERNELS is unset,
    # and ponder.kernels (Triton on CUDA) otherwise; "kernels" always calls ponder.kernels.
    attention: str = "auto"
    # Rows decoded in one forward; an expand call with more rows runs in chunks of this size.
    max_batch_rows: int = 256
    # Prompt tokens per prefill forward (bounds the (T, T) attention scores of a long prompt).
    prefill_chunk: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))
        if not isinstance(self.block_size, int) or not 1 <= self.block_size <= 1024:
            raise InvalidArgument("engine.block_size", f"must be an integer in [1, 1024], got {self.block_size!r}")
        if not isinstance(self.max_kv_bytes, int) or self.max_kv_bytes <= 0:
            raise InvalidArgument("engine.max_kv_bytes", f"must be a positive integer, got {self.max_kv_bytes!r}")
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidArgument("engine.dtype", f"must be float32, bfloat16 or float16, got {self.dtype}")
        if self.dtype == torch.float16 and not self.device.startswith("cuda"):
            # Measured: fp16 matmul on this CPU runs at ~15-20 GFLOP/s against ~200 for fp32.
            raise InvalidArgument("engine.dtype", "float16 is only supported on CUDA; use float32 or bfloat16")
        if self.attention not in ("auto", "kernels"):
            raise InvalidArgument("engine.attention", f"must be 'auto' or 'kernels', got {self.attention!r}")
        if not isinstance(self.max_batch_rows, int) or self.max_batch_rows < 1:
            raise InvalidArgument("engine.max_batch_rows", f"must be >= 1, got {self.max_batch_rows!r}")
        if not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1:
            raise InvalidArgument("engine.prefill_chunk", f"must be >= 1, got {self.prefill_chunk!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidArgument("engine.device", f"{self.device!r}: {exc}") from None
