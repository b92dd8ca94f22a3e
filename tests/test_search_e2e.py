"""Every strategy end to end through SearchLoop on a tiny real model: HFPolicy over a random
Llama checkpoint built in the test, scored by a ValueHeadVerifier with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.workers.hf_policy import HFPolicy
from ponder.workers.loop import SearchLoop
from ponder.workers.models import resolve
from ponder.workers.prm.value_head import ValueHead, ValueHeadVerifier

STRATEGIES = ["best_of_n", "beam", "lookahead", "dvts", "revision", "hybrid"]


@pytest.fixture(scope="module")
def policy(tiny_llama_dir: Path) -> HFPolicy:
    return HFPolicy(resolve(str(tiny_llama_dir)))


@pytest.fixture(scope="module")
def verifier(policy: HFPolicy, tmp_path_factory: pytest.TempPathFactory) -> ValueHeadVerifier:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    ValueHead(policy.hidden_size, "mlp", 16).save(path)
    ver = ValueHeadVerifier(path)
    ver.check_policy(policy.hidden_size)
    return ver


def solve(policy: HFPolicy, verifier: ValueHeadVerifier, strategy: str, **cfg: object) -> list[pb.SolveEvent]:
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, verifier, sink=lambda _j, evs: events.extend(evs))
    config = SolveConfig(question="What is 2 + 3?", strategy=strategy, generations=4, max_steps=3,
                         max_step_tokens=6, seed=7, **cfg)  # type: ignore[arg-type]
    loop.submit("job", config.validate())
    loop.run_until_idle()
    return events


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_end_to_end(policy: HFPolicy, verifier: ValueHeadVerifier, strategy: str) -> None:
    events = solve(policy, verifier, strategy, beam_width=2)
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "final", kinds
    steps = [e.step for e in events if e.HasField("step")]
    assert steps and all(s.HasField("score") and 0.0 < s.score < 1.0 for s in steps)
    assert any(e.HasField("candidate") for e in events)
    fin = events[-1].final
    u = fin.usage
    assert 1 <= u.generations <= 4
    assert u.decode_tokens >= len(steps)  # rollout steps are decoded too, but not streamed
    # the paper's accounting: 2·P per policy token processed plus 2 per head parameter per step
    policy_flops = 2.0 * policy.n_params * (u.prompt_tokens + u.decode_tokens)
    scored = (u.flops - policy_flops) / (2.0 * verifier.n_params)
    assert scored == pytest.approx(round(scored), abs=1e-3)
    assert round(scored) == len(steps)  # one head evaluation per streamed step
    if strategy == "lookahead":  # ... read at the end of its rollout, whose steps are not streamed
        assert u.steps > len(steps)
    else:
        assert u.steps == len(steps)
    assert fin.strategy == strategy


@pytest.mark.parametrize("strategy", ["beam", "revision"])
def test_same_seed_same_transcript_on_a_real_model(policy: HFPolicy, verifier: ValueHeadVerifier, strategy: str) -> None:
    def transcript() -> list[tuple[int, str, float]]:
        return [(e.step.node_id, e.step.text, e.step.score) for e in solve(policy, verifier, strategy) if e.HasField("step")]

    assert transcript() == transcript()
