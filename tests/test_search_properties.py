"""Properties of the strategies, run through the real SearchLoop with a scripted policy and
verifier (tests/fakes.py): beam width, budgets, determinism, selection, accounting, release,
cancellation and batching across questions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fakes import ScriptedPolicy, ScriptedVerifier, StepScript
from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.workers.loop import SearchLoop
from ponder.workers.search import STRATEGY_CLASSES
from ponder.workers.types import Node

STRATEGIES = ["best_of_n", "beam", "lookahead", "dvts", "revision", "hybrid", "auto"]


def run(
    policy: ScriptedPolicy,
    verifier: ScriptedVerifier | None,
    **cfg: object,
) -> tuple[list[pb.SolveEvent], SearchLoop]:
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, verifier, sink=lambda _job, evs: events.extend(evs))
    config = SolveConfig(question=str(cfg.pop("question", "What is 3 + 4?")), **cfg)  # type: ignore[arg-type]
    loop.submit("job", config)
    loop.run_until_idle()
    return events, loop


def kind(events: list[pb.SolveEvent], name: str) -> list[pb.SolveEvent]:
    return [e for e in events if e.WhichOneof("kind") == name]


def final(events: list[pb.SolveEvent]) -> pb.Final:
    finals = kind(events, "final")
    assert len(finals) == 1, [e for e in events if e.WhichOneof("kind") == "error"]
    return finals[0].final


def test_registered_names() -> None:
    assert set(STRATEGIES) <= set(STRATEGY_CLASSES)
    assert "auto" in STRATEGY_CLASSES


@pytest.mark.parametrize("n,m", [(16, 4), (8, 2), (9, 3)])
def test_beam_keeps_n_over_m_parents_with_m_children(n: int, m: int) -> None:
    policy = ScriptedPolicy(StepScript(steps=100))  # nothing finishes before the step cap
    verifier = ScriptedVerifier()
    events, _ = run(policy, verifier, strategy="beam", generations=n, beam_width=m, max_steps=6, seed=3)
    calls = policy.expand_calls
    assert len(calls) == 6
    assert len(calls[0]) == n and len({id(p) for p in calls[0]}) == 1  # N first steps of the root
    scored = {id(node): node for batch in verifier.calls for node in batch}
    previous: list[Node] = calls[0]
    for batch in calls[1:]:
        counts = Counter(id(p) for p in batch)
        assert len(counts) == n // m and set(counts.values()) == {m}
        # the kept parents are the best N/M children of the previous round by aggregate
        prev_children = [c for c in scored.values() if c.parent is not None and c.parent in previous]
        best = sorted(prev_children, key=lambda c: -(c.aggregate or 0.0))[: n // m]
        assert {id(b) for b in best} == set(counts)
        previous = batch
    assert final(events).usage.generations == n
    assert len(kind(events, "candidate")) == n  # ends with N candidates


def test_beam_with_uneven_width_fills_exactly_n_slots() -> None:
    policy = ScriptedPolicy(StepScript(steps=100))
    run(policy, ScriptedVerifier(), strategy="beam", generations=10, beam_width=4, max_steps=3, seed=1)
    for batch in policy.expand_calls[1:]:
        assert sorted(Counter(id(p) for p in batch).values()) == [2, 4, 4]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [1, 3, 4, 7, 16])
def test_no_strategy_exceeds_its_budget(strategy: str, budget: int) -> None:
    policy = ScriptedPolicy(StepScript(steps=4))
    events, _ = run(policy, ScriptedVerifier(), strategy=strategy, generations=budget, beam_width=min(4, budget), seed=11)
    usage = final(events).usage
    assert 1 <= usage.generations <= budget
    assert all(len(batch) <= budget for batch in policy.expand_calls)
    if strategy != "dvts":  # DVTS subtrees keep growing after a child finishes (docs/strategies.md)
        assert len(kind(events, "candidate")) <= budget
    assert usage.decode_tokens > 0 and usage.flops > 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_result(strategy: str) -> None:
    def transcript(seed: int) -> tuple[list[tuple[int, int, str, float]], str]:
        events, _ = run(ScriptedPolicy(), ScriptedVerifier(), strategy=strategy, generations=8, seed=seed)
        steps = [(e.step.node_id, e.step.parent_id, e.step.text, round(e.step.score, 6)) for e in kind(events, "step")]
        return steps, final(events).answer

    a, b, c = transcript(42), transcript(42), transcript(43)
    assert a == b
    assert a[0] != c[0]  # another seed samples other steps


def test_weighted_selection_beats_the_majority() -> None:
    policy = ScriptedPolicy(StepScript(steps=2, answers=("7", "9"), weights=(0.7, 0.3)))
    verifier = ScriptedVerifier(answer_scores={"7": 0.1, "9": 0.95})
    events, _ = run(policy, verifier, strategy="best_of_n", generations=16, seed=5, selection="weighted")
    votes = {v.answer: (v.count, v.score) for v in final(events).votes}
    assert votes["7"][0] > votes["9"][0]  # 7 has more votes ...
    assert votes["9"][1] > votes["7"][1]  # ... 9 the larger score sum
    assert final(events).answer == "9"
    events, _ = run(policy, verifier, strategy="best_of_n", generations=16, seed=5, selection="majority")
    assert final(events).answer == "7"


@pytest.mark.parametrize("budget,k", [(16, 2), (12, 3), (8, 1), (4, 2), (3, 5)])
def test_lookahead_is_charged_n_times_k_plus_one(budget: int, k: int) -> None:
    policy = ScriptedPolicy(StepScript(steps=100))
    events, _ = run(policy, ScriptedVerifier(), strategy="lookahead", generations=budget, lookahead=k,
                    beam_width=min(4, budget), max_steps=k + 3, seed=2)
    k_eff = min(k, budget - 1)
    beams = budget // (k_eff + 1)
    assert final(events).usage.generations == beams * (k_eff + 1) <= budget
    # round 1: N sampled children, then k greedy rollout steps of each
    temps = [s[0].temperature for s in policy.expand_sampling[: k_eff + 1]]
    assert temps[0] > 0 and all(t == 0.0 for t in temps[1:])
    assert [len(c) for c in policy.expand_calls[: k_eff + 1]] == [beams] * (k_eff + 1)
    # rollout nodes are released and never streamed as steps
    sampled = sum(len(c) for c, s in zip(policy.expand_calls, policy.expand_sampling) if s[0].temperature > 0)
    assert len(kind(events, "step")) == sampled


def test_lookahead_with_k_zero_is_beam_search() -> None:
    a, _ = run(ScriptedPolicy(), ScriptedVerifier(), strategy="beam", generations=8, seed=9)
    b, _ = run(ScriptedPolicy(), ScriptedVerifier(), strategy="lookahead", generations=8, lookahead=0, seed=9)
    steps = lambda ev: [(e.step.node_id, e.step.text, e.step.score) for e in kind(ev, "step")]  # noqa: E731
    assert steps(a) == steps(b)
    assert final(a).answer == final(b).answer and final(a).usage.generations == final(b).usage.generations == 8


def _attempt_answers(answers: list[str]):  # type: ignore[no-untyped-def]
    def step(parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        attempt = len(parent.root.prompt.attempts)  # type: ignore[union-attr]
        if parent.depth == 0:
            return f"Attempt {attempt} thinks.\n\n", False
        return f"So the answer is \\boxed{{{answers[attempt]}}}.", True

    return step


def test_revision_sees_previous_attempts_and_selects_across_the_chain() -> None:
    policy = ScriptedPolicy(step_fn=_attempt_answers(["5", "6", "7", "8", "9", "10"]))
    verifier = ScriptedVerifier(answer_scores={"5": 0.9, "6": 0.2, "7": 0.2, "8": 0.2, "9": 0.3, "10": 0.25})
    events, _ = run(policy, verifier, strategy="revision", generations=6, seed=1)
    assert [len(p[0].attempts) for p in policy.prefill_calls] == [0, 1, 2, 3, 4, 5]
    assert "boxed{5}" in policy.prefill_calls[1][0].attempts[0]
    cands = kind(events, "candidate")
    assert [c.candidate.attempt_index for c in cands] == [0, 1, 2, 3, 4, 5]
    fin = final(events)
    assert fin.answer == "5" and fin.solution == cands[0].candidate.solution  # the first attempt wins
    assert fin.usage.generations == 6


def test_revision_majority_without_a_verifier_can_pick_an_earlier_attempt() -> None:
    policy = ScriptedPolicy(step_fn=_attempt_answers(["5", "5", "6", "7"]))
    events, _ = run(policy, None, strategy="revision", generations=4, seed=1)
    assert final(events).answer == "5"
    assert kind(events, "candidate")[-1].candidate.answer == "7"


@pytest.mark.parametrize("budget,ratio,chains", [(16, 0.5, [4, 4, 4, 4]), (16, 1.0, [16]), (16, 0.0, [1] * 16), (10, 0.5, [4, 3, 3])])
def test_hybrid_splits_the_budget(budget: int, ratio: float, chains: list[int]) -> None:
    from ponder.workers.search.revision import split_budget

    assert split_budget(budget, ratio) == chains
    policy = ScriptedPolicy(StepScript(steps=2))
    events, _ = run(policy, ScriptedVerifier(), strategy="hybrid", generations=budget, sequential_ratio=ratio, seed=4)
    assert final(events).usage.generations == budget
    cands = kind(events, "candidate")
    assert len(cands) == budget
    assert max(c.candidate.attempt_index for c in cands) == max(chains) - 1
    assert len(policy.prefill_calls[0]) == len(chains)  # every chain's first attempt in one call


@pytest.mark.parametrize("strategy", ["beam", "dvts", "best_of_n", "hybrid"])
def test_cancellation_stops_work_within_one_step(strategy: str) -> None:
    policy = ScriptedPolicy(StepScript(steps=30))
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, ScriptedVerifier(), sink=lambda _j, evs: events.extend(evs))
    loop.submit("job", SolveConfig(question="q?", strategy=strategy, generations=8, seed=0))
    for _ in range(5):
        loop.tick()
    before = len(policy.expand_calls)
    assert loop.cancel("job")
    loop.tick()
    loop.tick()
    assert len(policy.expand_calls) - before <= 1
    assert loop.idle
    errors = kind(events, "error")
    assert errors and errors[-1].error.code == "CANCELLED" and not kind(events, "final")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_token_cap_stops_the_search_with_a_reason(strategy: str) -> None:
    policy = ScriptedPolicy(StepScript(steps=30))
    events, _ = run(policy, ScriptedVerifier(), strategy=strategy, generations=8, max_tokens=120, seed=0)
    fin = final(events)
    assert fin.stop_reason == "max_tokens"
    assert fin.answer is not None and len(kind(events, "candidate")) >= 1
    # stops within one round after the cap: at most one more batch (8 rows × 5 tokens) past it
    assert fin.usage.prompt_tokens + fin.usage.decode_tokens <= 120 + 8 * 5 * 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_steps_stream_with_scores_and_every_node_is_released(strategy: str) -> None:
    policy = ScriptedPolicy(StepScript(steps=3))
    verifier = ScriptedVerifier()
    events, _ = run(policy, verifier, strategy=strategy, generations=8, seed=6)
    steps = kind(events, "step")
    assert steps and all(e.step.HasField("score") for e in steps)
    seen = {-1}
    for e in steps:  # a step's parent was streamed before it (or is the question)
        assert e.step.parent_id in seen
        seen.add(e.step.node_id)
    made = {n.id for batch in policy.expand_calls for n in batch} | {
        s.node_id for s in (e.step for e in steps)
    }
    assert made <= set(policy.released) and set(policy.released) == set(verifier.released)
    assert len(policy.released) == len(set(policy.released))  # each node freed once


def test_pruned_beams_are_released_during_the_search() -> None:
    policy = ScriptedPolicy(StepScript(steps=100))
    loop = SearchLoop(policy, ScriptedVerifier())
    loop.submit("job", SolveConfig(question="q?", strategy="beam", generations=16, beam_width=4, max_steps=8, seed=0))
    for _ in range(6):
        loop.tick()
    assert not loop.idle
    assert len(policy.released) >= 2 * (16 - 4)  # two rounds of pruning already freed


def test_many_questions_one_policy_call_per_tick() -> None:
    policy = ScriptedPolicy(StepScript(steps=4))
    verifier = ScriptedVerifier()
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, verifier, sink=lambda _j, evs: events.extend(evs))
    modes = ["last", "min", "last", "prod", "mean", "last"]
    for i, (strategy, mode) in enumerate(zip(STRATEGIES, modes)):
        loop.submit(f"job{i}", SolveConfig(question=f"Question {i}?", strategy=strategy, generations=8, seed=i, aggregation=mode))
    mixed = 0
    while not loop.idle:
        e0, p0, v0 = len(policy.expand_calls), len(policy.prefill_calls), len(verifier.calls)
        loop.tick()
        assert len(policy.expand_calls) - e0 <= 1 and len(policy.prefill_calls) - p0 <= 1
        new_modes = verifier.modes[v0:]
        assert len(new_modes) == len(set(new_modes))  # one verifier call per aggregation mode
        if len(policy.expand_calls) > e0:
            roots = {id(n.root) for n in policy.expand_calls[-1]}
            questions = {n.root.prompt.question for n in policy.expand_calls[-1]}  # type: ignore[union-attr]
            mixed = max(mixed, len(questions))
            assert len(roots) >= len(questions)
    assert mixed >= 4  # most questions shared a policy call
    assert len(kind(events, "final")) == 6


def test_prunes_of_all_questions_share_one_topk_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam and DVTS questions of one tick are pruned in one segmented topk_prune call, and a
    prune costs no tick of its own: the questions still expand together in one policy call."""
    import ponder.workers.loop as loop_mod

    launches: list[int] = []  # segments per launch
    real = loop_mod.topk_prune

    def counting(scores, offsets, k, parents):  # type: ignore[no-untyped-def]
        launches.append(len(offsets) - 1)
        return real(scores, offsets, k, parents)

    monkeypatch.setattr(loop_mod, "topk_prune", counting)
    policy = ScriptedPolicy(StepScript(steps=100))
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, ScriptedVerifier(), sink=lambda _j, evs: events.extend(evs))
    for i, strategy in enumerate(["beam", "beam", "dvts", "beam"]):
        loop.submit(f"job{i}", SolveConfig(question=f"Question {i}?", strategy=strategy, generations=8, beam_width=2, max_steps=5, seed=i))
    while not loop.idle:
        n0 = len(launches)
        loop.tick()
        assert len(launches) - n0 <= 1
    # a launch holds the 3 beam questions' segments and the dvts question's 4 subtrees; in the
    # 5th round the beams end at the step cap without pruning, dvts still picks its best children
    assert launches == [7, 7, 7, 7, 4]
    assert [len({n.root.prompt.question for n in call}) for call in policy.expand_calls] == [4] * 5  # type: ignore[union-attr]
    assert len(kind(events, "final")) == 4


def test_search_strategies_without_a_verifier() -> None:
    from ponder.proto.errors import InvalidArgument

    for strategy in ("beam", "lookahead", "dvts"):
        loop = SearchLoop(ScriptedPolicy())
        with pytest.raises(InvalidArgument):
            loop.submit("job", SolveConfig(question="q?", strategy=strategy))
    for strategy in ("best_of_n", "revision", "hybrid"):
        events, _ = run(ScriptedPolicy(), None, strategy=strategy, generations=4, seed=1)
        assert final(events).answer
        assert not any(e.step.HasField("score") for e in kind(events, "step"))


def test_finished_samples_are_released_while_the_question_still_samples() -> None:
    """Best-of-N waves free each finished sample's KV when it becomes a candidate, not when the
    question ends, so widened questions do not hold every sample's cache at once."""
    policy = ScriptedPolicy(StepScript(steps=2))
    verifier = ScriptedVerifier()
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, verifier, sink=lambda _j, evs: events.extend(evs))
    loop.submit("job", SolveConfig(question="q?", strategy="best_of_n", generations=16, budget_mode="adaptive",
                                   min_generations=16, max_generations=16, seed=0))
    freed_early: set[int] = set()
    while not loop.idle:
        loop.tick()
        if not kind(events, "final"):
            done = {e.candidate.node_id for e in kind(events, "candidate")}
            freed_early |= done & set(policy.released) & set(verifier.released)
    assert len(kind(events, "candidate")) == 16
    assert len(freed_early) >= 4  # at least the first wave's samples, freed before the question ended
    assert len(policy.released) == len(set(policy.released)) and set(policy.released) == set(verifier.released)
