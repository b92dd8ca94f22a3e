"""The model runner: our own forward for Llama-family models over a paged, reference-counted,
prefix-indexed KV cache, with step-wise batched decoding (see docs/engine.md)."""

from ponder.workers.engine.config import EngineConfig, KVCacheExhausted
from ponder.workers.engine.engine import Engine
from ponder.workers.engine.kv_cache import BlockPool, CacheStats, Sequence
from ponder.workers.engine.engine_policy import EnginePolicy

__all__ = ["BlockPool", "CacheStats", "Engine", "EngineConfig", "EnginePolicy", "KVCacheExhausted", "Sequence"]
