"""Every Triton kernel, exercised by the real search path: the engine's decode attention, the
value-head verifier's fused scoring and beam search's pruning, all through the dispatch with
PONDER_KERNELS=triton (the interpreter on CPU tensors), in one batched loop of two questions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ponder.kernels import ops
from ponder.proto.config import SolveConfig
from ponder.workers.engine.engine_policy import EnginePolicy
from ponder.workers.loop import SearchLoop
from ponder.workers.prm.value_head import ValueHead, ValueHeadVerifier


def _counting(name: str, fn: Callable[..., Any], calls: Counter[str]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kw: Any) -> Any:
        calls[name] += 1
        return fn(*args, **kw)

    return wrapped


def test_beam_search_runs_on_the_triton_kernels(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_KERNELS", "triton")
    calls: Counter[str] = Counter()
    for name, fn in list(ops.TRITON.items()):
        monkeypatch.setitem(ops.TRITON, name, _counting(name, fn, calls))
    policy = EnginePolicy.load(str(tiny_llama_dir))
    verifier = ValueHeadVerifier(ValueHead(policy.hidden_size))
    events: list[Any] = []
    loop = SearchLoop(policy, verifier, sink=lambda job, evs: events.extend(evs))
    common = dict(max_steps=2, max_step_tokens=4, seed=3)
    loop.submit("beam", SolveConfig("What is 2 + 3?", strategy="beam", generations=4, beam_width=2, **common))
    loop.submit("bon", SolveConfig("What is 4 + 4?", strategy="best_of_n", generations=2, **common))
    loop.run_until_idle()
    finals = {e.job_id: e.final for e in events if e.WhichOneof("kind") == "final"}
    assert set(finals) == {"beam", "bon"}
    assert all(f.usage.steps > 0 for f in finals.values())
    scored = [e.step for e in events if e.WhichOneof("kind") == "step"]
    assert scored and all(s.HasField("score") and 0.0 <= s.score <= 1.0 for s in scored)
    assert calls["prm_score"] > 0
    assert calls["topk_prune"] > 0
    assert calls["paged_attention"] + calls["shared_prefix_attention"] > 0, calls
