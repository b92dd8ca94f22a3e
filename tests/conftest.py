"""Shared test set-up. TRITON_INTERPRET must be set before any kernel module is imported."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run tiny models, where two intra-op threads fighting other processes for 2 cores cost
# far more than they give (measured: a tiny-model search took 12.5 s with the default threads
# under load, 0.47 s with one). Subprocesses (workers, schedulers) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (tiny_models, fakes)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private Redis server on a free port for the whole session (tests use their own prefix)."""
    from ponder.service.redis_server import RedisServer

    server = RedisServer()
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of this test's own: tests share the server, never their keys."""
    import uuid

    return f"t{uuid.uuid4().hex[:10]}"


# The longest files (minutes on CI's 2 cores) run first: with `-n 2 --dist loadfile` (./run test)
# a long file handed out last would run alone at the end while the other process sits idle.
FIRST = ("test_scaling_bench.py", "test_gpu_check.py", "test_adaptive_bench.py", "test_recovery.py",
         "test_chaos_bench.py", "test_train_report.py", "test_cli.py", "test_hardening.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order
