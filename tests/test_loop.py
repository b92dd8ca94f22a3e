"""The batched search loop itself: one policy call per tick across questions, the reviser
route, accounting, and failure isolation."""

from __future__ import annotations

from typing import Any

import pytest

from fakes import ScriptedPolicy, ScriptedVerifier, StepScript

from ponder.proto.config import SolveConfig
from ponder.workers.loop import SearchLoop
from ponder.workers.types import Node, SamplingParams, StepOutput


def _run(loop: SearchLoop, jobs: dict[str, SolveConfig]) -> dict[str, list[Any]]:
    events: dict[str, list[Any]] = {j: [] for j in jobs}
    loop.set_sink(lambda job, evs: events[job].extend(evs))
    for job_id, cfg in jobs.items():
        loop.submit(job_id, cfg)
    loop.run_until_idle()
    return events


def test_one_expand_call_per_tick_across_questions() -> None:
    policy = ScriptedPolicy(StepScript(steps=3))
    loop = SearchLoop(policy)
    jobs = {f"q{i}": SolveConfig(f"question {i}", generations=3, seed=i) for i in range(5)}
    events = _run(loop, jobs)
    assert all(e[-1].WhichOneof("kind") == "final" for e in events.values())
    # 3 steps per solution: every question's rows ride in the same 3 expand calls
    assert len(policy.expand_calls) == 3
    assert [len(c) for c in policy.expand_calls] == [15, 15, 15]
    assert len(policy.prefill_calls) == 1 and len(policy.prefill_calls[0]) == 5


def test_revision_prompts_go_to_the_reviser() -> None:
    policy, reviser = ScriptedPolicy(StepScript(steps=2)), ScriptedPolicy(StepScript(steps=2))
    reviser.n_params = 3000
    loop = SearchLoop(policy, reviser=reviser)
    events = _run(loop, {"r": SolveConfig("revise me", strategy="revision", generations=3, seed=1),
                         "b": SolveConfig("sample me", generations=2, seed=1)})
    assert all(e[-1].WhichOneof("kind") == "final" for e in events.values())
    first = [p for call in policy.prefill_calls for p in call]
    later = [p for call in reviser.prefill_calls for p in call]
    assert all(not p.attempts for p in first) and len(first) == 2  # each job's first attempt
    assert later and all(p.attempts for p in later)
    # every node the reviser expands hangs under a root the reviser built
    assert all(n.root.prompt is not None and n.root.prompt.attempts for c in reviser.expand_calls for n in c)
    assert all(not n.root.prompt.attempts for c in policy.expand_calls for n in c)


def test_revision_prompts_carry_each_attempts_score() -> None:
    """The chain passes the verifier's score of every earlier attempt with it (a reviser whose
    format shows or sorts by scores reads them); unscored without a verifier."""
    policy, reviser = ScriptedPolicy(StepScript(steps=2)), ScriptedPolicy(StepScript(steps=2))
    loop = SearchLoop(policy, ScriptedVerifier(), reviser=reviser)
    events = _run(loop, {"r": SolveConfig("revise me", strategy="revision", generations=4, seed=1)})
    scores = [c.candidate.score for c in events["r"] if c.WhichOneof("kind") == "candidate"]
    prompts = [p for call in reviser.prefill_calls for p in call]
    assert [len(p.attempts) for p in prompts] == [1, 2, 3]
    for p in prompts:  # attempt k's prompt: attempts 1..k-1 with the scores they were emitted with
        assert len(p.scores) == len(p.attempts)
        assert list(p.scores) == pytest.approx(scores[: len(p.attempts)])
    plain = ScriptedPolicy(StepScript(steps=2))
    _run(SearchLoop(policy, reviser=plain), {"r": SolveConfig("revise me", strategy="revision", generations=3, seed=1)})
    assert all(p.scores == (None,) * len(p.attempts) for call in plain.prefill_calls for p in call)


class _Exploding(ScriptedPolicy):
    def expand(self, parents: list[Node], sampling: list[SamplingParams], seeds: list[int]) -> list[StepOutput]:
        if any("boom" in p.root.prompt.question for p in parents if p.root.prompt):
            raise RuntimeError("the model fell over")
        return super().expand(parents, sampling, seeds)


def test_a_failed_batch_fails_only_the_bad_job() -> None:
    loop = SearchLoop(_Exploding())
    events = _run(loop, {"bad": SolveConfig("boom", generations=2), "ok": SolveConfig("fine", generations=2)})
    assert events["bad"][-1].WhichOneof("kind") == "error" and events["bad"][-1].error.code == "INTERNAL"
    assert "fell over" in events["bad"][-1].error.message
    # the good job shared the failed batch; retried on its own, it still gets its answer
    assert events["ok"][-1].WhichOneof("kind") == "final"
    events = _run(loop, {"after": SolveConfig("fine again", generations=2)})
    assert events["after"][-1].WhichOneof("kind") == "final"


def test_retry_after_a_failed_batch_keeps_the_seeds() -> None:
    alone = _run(SearchLoop(ScriptedPolicy()), {"ok": SolveConfig("fine", generations=3, seed=5)})
    mixed = _run(SearchLoop(_Exploding()), {"bad": SolveConfig("boom", generations=3, seed=5),
                                            "ok": SolveConfig("fine", generations=3, seed=5)})
    assert mixed["ok"][-1].final.solution == alone["ok"][-1].final.solution


def test_usage_counts_prompt_decode_and_sharing() -> None:
    policy = ScriptedPolicy(StepScript(steps=2, tokens_per_step=5))
    loop = SearchLoop(policy)
    events = _run(loop, {"q": SolveConfig("count me", generations=4, seed=0)})
    u = events["q"][-1].final.usage
    prompt = len(policy.format_prompt(policy.prefill_calls[0][0])) // 4 + 1
    assert u.generations == 4 and u.steps == 8
    assert u.decode_tokens == 8 * 5 and u.prompt_tokens == prompt
    # without sharing, 3 of the 4 samples would have prefilled the prompt again
    assert u.tokens_saved == 3 * prompt
    assert u.flops == 2 * policy.n_params * (prompt + 40)
    assert u.flops_unshared == 2 * policy.n_params * (4 * prompt + 40)


def test_drop_forgets_a_job_frees_its_nodes_and_publishes_nothing_more() -> None:
    policy = ScriptedPolicy(StepScript(steps=4))
    loop = SearchLoop(policy)
    events: dict[str, list[Any]] = {"a": [], "b": []}
    loop.set_sink(lambda job, evs: events[job].extend(evs))
    loop.submit("a", SolveConfig("question a", generations=2, seed=1))
    loop.submit("b", SolveConfig("question b", generations=2, seed=2))
    loop.tick()
    loop.tick()
    seen = len(events["a"])
    assert loop.drop("a") and not loop.drop("a") and not loop.drop("nope")
    assert policy.released  # a's nodes went back to the policy
    loop.run_until_idle()
    assert len(events["a"]) == seen  # nothing after the drop, not even an error
    assert events["b"][-1].WhichOneof("kind") == "final" and loop.idle
