"""Adaptive budgets and the ``auto`` strategy: the request's budget fields, the live controller's
rules (controller.decide, Tally), the budget bank across a batch of questions run through the
real SearchLoop with scripted fakes, ``auto``'s pilot/plan phases, and the terminal rendering."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from fakes import ScriptedPolicy, ScriptedVerifier
from ponder.clients.render import render
from ponder.proto import pb
from ponder.proto.config import Limits, SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import Candidate
from ponder.workers.loop import SearchLoop
from ponder.workers.search.controller import BudgetBank, ControllerConfig, Tally, decide
from ponder.workers.search.plan import PlanTable, StrategyPlan
from ponder.workers.types import Node

# -- helpers ---------------------------------------------------------------------------------


def kind(events: list[pb.SolveEvent], name: str) -> list[Any]:
    return [getattr(e, name) for e in events if e.WhichOneof("kind") == name]


def final(events: list[pb.SolveEvent]) -> pb.Final:
    finals = kind(events, "final")
    assert len(finals) == 1, kind(events, "error")
    return finals[0]


def run_batch(
    loop: SearchLoop, jobs: dict[str, SolveConfig]
) -> dict[str, list[pb.SolveEvent]]:
    """Submit every job before the first tick (one batch), run to idle, return events per job."""
    events: dict[str, list[pb.SolveEvent]] = defaultdict(list)
    loop.set_sink(lambda job, evs: events[job].extend(evs))
    for job_id, cfg in jobs.items():
        loop.submit(job_id, cfg)
    loop.run_until_idle()
    return dict(events)


def question(node: Node) -> str:
    prompt = node.root.prompt
    assert prompt is not None
    return prompt.question


def boxed(answer: str) -> str:
    return f"So the answer is \\boxed{{{answer}}}."


class Behaviour:
    """Per-question scripted behaviour: two steps per solution, the second states an answer.

    ``answers[q]`` is a function of the question's running sample count (deterministic, no
    reliance on the seeds), ``scores[q]`` the verifier's score for every step of ``q``."""

    def __init__(self, answers: dict[str, Any], scores: dict[str, float]) -> None:
        self.answers = answers
        self.scores = scores
        self.count: dict[str, int] = defaultdict(int)

    def step(self, parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        q = question(parent)
        if parent.depth == 0:
            return f"Step 1 of {q}: think {rng.randrange(1000)}.", False
        i = self.count[q]
        self.count[q] += 1
        return boxed(self.answers[q](i, parent, rng)), True

    def score(self, node: Node) -> float:
        return self.scores[question(node)]


def const(answer: str) -> Any:
    return lambda i, parent, rng: answer


def alternating(*answers: str) -> Any:
    return lambda i, parent, rng: answers[i % len(answers)]


def scattered(i: int, parent: Node, rng: random.Random) -> str:
    return str(1000 + i)  # every sample a different answer


def cand(answer: str | None, score: float | None = None) -> Candidate:
    return Candidate(answer=answer, solution=f"... {answer}", score=score)


def tally(*pairs: tuple[str | None, float]) -> Tally:
    return Tally.of([cand(a, s) for a, s in pairs], scored=True)


# -- 1. the request's budget fields ----------------------------------------------------------


def test_adaptive_by_default_only_for_auto() -> None:
    assert SolveConfig("q", strategy="auto").adaptive
    for strategy in ("best_of_n", "beam", "lookahead", "dvts", "revision", "hybrid"):
        assert not SolveConfig("q", strategy=strategy).adaptive, strategy
    assert SolveConfig("q", strategy="best_of_n", budget_mode="adaptive").adaptive
    assert not SolveConfig("q", strategy="auto", budget_mode="fixed").adaptive
    # every default validates
    SolveConfig("q", strategy="auto").validate()
    SolveConfig("q", strategy="best_of_n", budget_mode="adaptive", generations=8).validate()
    SolveConfig("q", strategy="auto", budget_mode="fixed", generations=8).validate()


def _invalid(cfg: SolveConfig, limits: Limits = Limits()) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        cfg.validate(limits)
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value


@pytest.mark.parametrize("strategy", ["beam", "lookahead", "dvts", "revision", "hybrid"])
def test_adaptive_mode_is_refused_for_tree_and_revision_strategies(strategy: str) -> None:
    err = _invalid(SolveConfig("q", strategy=strategy, generations=8, budget_mode="adaptive"))
    assert err.field == "budget.mode"
    assert strategy in err.message


@pytest.mark.parametrize(
    "changes,field_",
    [
        (dict(budget_mode="elastic"), "budget.mode"),
        (dict(budget_mode="ADAPTIVE"), "budget.mode"),
        (dict(strategy="auto", max_generations=4, min_generations=6), "budget.max_generations"),  # max < min
        (dict(strategy="auto", max_generations=6), "budget.max_generations"),  # max < N
        (dict(strategy="auto", min_generations=9), "budget.min_generations"),  # min > N
        (dict(strategy="auto", min_generations=0), "budget.min_generations"),
        (dict(strategy="auto", max_generations=300), "budget.max_generations"),  # over Limits
        (dict(strategy="auto", budget_mode="fixed", min_generations=2), "budget.min_generations"),
        (dict(strategy="auto", budget_mode="fixed", max_generations=16), "budget.max_generations"),
        (dict(strategy="best_of_n", min_generations=2), "budget.min_generations"),  # fixed by default
        (dict(strategy="best_of_n", max_generations=16), "budget.max_generations"),
        (dict(strategy="auto", min_generations=True), "budget.min_generations"),  # not an int
    ],
)
def test_budget_bounds_are_validated(changes: dict[str, Any], field_: str) -> None:
    err = _invalid(SolveConfig("q", generations=8).replace(**changes))
    assert err.field == field_, err.message
    assert str(err).startswith(field_ + ": ")


def test_max_below_min_names_max_generations() -> None:
    # min <= N <= max is enforced, so max < min is also max < N; either way the field is max.
    err = _invalid(SolveConfig("q", strategy="auto", generations=4, min_generations=4, max_generations=3))
    assert err.field == "budget.max_generations"
    # both bounds equal to N is a valid (degenerate) adaptive budget
    SolveConfig("q", strategy="auto", generations=4, min_generations=4, max_generations=4).validate()


def test_max_generations_is_checked_against_the_server_limits() -> None:
    cfg = SolveConfig("q", strategy="auto", generations=8, max_generations=40)
    cfg.validate(Limits(max_generations=64))
    assert _invalid(cfg, Limits(max_generations=32)).field == "budget.max_generations"


@pytest.mark.parametrize(
    "cfg",
    [
        SolveConfig("q", strategy="auto", generations=8, budget_mode="adaptive", min_generations=2, max_generations=20),
        SolveConfig("q", strategy="best_of_n", generations=6, budget_mode="adaptive", max_generations=7),
        SolveConfig("q", strategy="auto", generations=8, budget_mode="fixed"),
        SolveConfig("q", strategy="auto", generations=8),  # mode unset stays unset
        SolveConfig("q", strategy="beam", generations=8, beam_width=4),
    ],
)
def test_proto_round_trip_keeps_mode_and_bounds(cfg: SolveConfig) -> None:
    req = cfg.to_proto()
    assert req.budget.mode == (cfg.budget_mode or "")
    assert req.budget.HasField("min_generations") == (cfg.min_generations is not None)
    assert req.budget.HasField("max_generations") == (cfg.max_generations is not None)
    back = SolveConfig.from_proto(pb.SolveRequest.FromString(req.SerializeToString()))
    assert back == cfg
    assert (back.budget_mode, back.min_generations, back.max_generations) == (
        cfg.budget_mode, cfg.min_generations, cfg.max_generations,
    )
    assert back.adaptive == cfg.adaptive
    assert back.budget_bounds() == cfg.budget_bounds()


def test_from_proto_then_validate_refuses_adaptive_beam() -> None:
    req = pb.SolveRequest(question="q", strategy="beam")
    req.budget.generations = 8
    req.budget.mode = "adaptive"
    cfg = SolveConfig.from_proto(req)
    assert cfg.budget_mode == "adaptive" and cfg.adaptive
    assert _invalid(cfg).field == "budget.mode"


def test_budget_bounds_defaults() -> None:
    auto = SolveConfig("q", strategy="auto", generations=8)
    assert auto.budget_bounds() == (1, 32)  # max = 4 x N
    assert auto.budget_bounds(min_default=4) == (4, 32)  # min = the controller's minimum
    assert auto.budget_bounds(Limits(max_generations=20)) == (1, 20)  # capped by the limits
    assert SolveConfig("q", strategy="auto", generations=100).budget_bounds() == (1, 256)
    # never below N, even when the limit is
    assert SolveConfig("q", strategy="auto", generations=8).budget_bounds(Limits(max_generations=6)) == (1, 8)
    # a min_default above N is clipped to N
    assert SolveConfig("q", strategy="auto", generations=2).budget_bounds(min_default=4) == (2, 8)
    # explicit bounds win
    assert SolveConfig("q", strategy="auto", generations=8, min_generations=3, max_generations=11).budget_bounds(
        min_default=4
    ) == (3, 11)
    # fixed budgets: (N, N)
    assert SolveConfig("q", strategy="best_of_n", generations=8).budget_bounds() == (8, 8)
    assert SolveConfig("q", strategy="auto", generations=8, budget_mode="fixed").budget_bounds() == (8, 8)


# -- 2. the controller -----------------------------------------------------------------------

CFG = ControllerConfig()  # wave 4, min 4, window 4, stop 0.75, abandon after 12 at <= 0.2 / < 0.5


def test_tally_counts_equivalent_answers_as_one() -> None:
    t = tally(("1/2", 0.5), ("0.5", 0.3), ("3", 0.4))
    assert t.n == 3
    assert t.answers == ["1/2", "3"]  # first spelling kept
    assert t.counts == [2, 1]
    assert t.weights == pytest.approx([0.8, 0.4])
    assert t.leader_answer == "1/2"
    assert t.share == pytest.approx(0.8 / 1.2)
    assert t.margin == pytest.approx(0.4 / 1.2)
    assert t.mean_score == pytest.approx(1.2 / 3)
    assert t.best_score == pytest.approx(0.5)


def test_tally_stability_and_unscored_votes() -> None:
    t = Tally.empty()
    assert (t.share, t.margin, t.stable, t.leader_answer) == (0.0, 0.0, 0, "")
    t.add(cand("7", 0.9), True)
    assert (t.leader_answer, t.stable) == ("7", 1)
    t.add(cand(None, 0.1), True)  # no answer: counted, the leader keeps leading
    assert (t.n, t.leader_answer, t.stable) == (2, "7", 2)
    t.add(cand("9", 0.5), True)
    t.add(cand("9", 0.5), True)  # 9 overtakes 7 (1.0 > 0.9): the streak restarts
    assert (t.leader_answer, t.stable) == ("9", 1)
    t.add(cand("9.0", 0.5), True)  # an equivalent spelling extends it
    assert (t.leader_answer, t.stable, t.counts) == ("9", 2, [1, 3])
    # without a verifier every vote weighs 1 and the mean "score" is 1
    u = Tally.of([cand("a", 0.01), cand("b", 0.99), cand("a", 0.01)], scored=False)
    assert u.weights == [2.0, 1.0] and u.leader_answer == "a"
    assert u.share == pytest.approx(2 / 3) and u.mean_score == 1.0


def test_stop_needs_min_candidates_window_and_share() -> None:
    settled = tally(*[("42", 0.9)] * 4)
    assert decide(settled, 4, 8, 4, 32, CFG).kind == "stop"
    # fewer candidates than min_candidates (window and share are met)
    assert decide(tally(*[("42", 0.9)] * 3), 3, 8, 1, 32, ControllerConfig(window=3)).kind == "continue"
    # the leader has not led for `window` candidates
    assert decide(settled, 4, 8, 4, 32, ControllerConfig(window=5)).kind == "continue"
    # the share is below stop_share
    split = tally(("42", 0.9), ("42", 0.9), ("42", 0.9), ("41", 0.9))
    assert split.share == pytest.approx(0.75) and split.stable == 4
    assert decide(split, 4, 8, 4, 32, CFG).kind == "stop"  # >= stop_share
    assert decide(split, 4, 8, 4, 32, ControllerConfig(stop_share=0.8)).kind == "continue"
    # nor below the question's min_generations
    assert decide(settled, 4, 8, 6, 32, CFG).kind == "continue"


def test_one_confident_wrong_sample_cannot_stop() -> None:
    eager = ControllerConfig(min_candidates=1, window=4)
    t = tally(("9", 0.99))
    assert t.share == 1.0
    assert decide(t, 1, 8, 1, 32, eager).kind == "continue"
    for _ in range(3):  # disagreeing samples follow: still no stop, whoever leads
        t.add(cand("7", 0.9), True)
        assert decide(t, t.n, 8, 1, 32, eager).kind == "continue"
        assert decide(t, t.n, 8, 1, 32, CFG).kind == "continue"
    assert t.leader_answer == "7" and t.stable < 4
    # with the default thresholds the first confident sample cannot end the question either
    assert decide(tally(("9", 0.99)), 1, 8, 1, 32, CFG).kind == "continue"


def test_abandon_rule() -> None:
    hopeless = tally(*[(str(i), 0.1) for i in range(12)])
    action = decide(hopeless, 12, 16, 4, 64, CFG)
    assert action.kind == "abandon" and "hopeless" in action.reason
    # too few candidates
    assert decide(tally(*[(str(i), 0.1) for i in range(11)]), 11, 16, 4, 64, CFG).kind == "continue"
    # mean score above abandon_score
    assert decide(tally(*[(str(i), 0.3) for i in range(12)]), 12, 16, 4, 64, CFG).kind == "continue"
    # an answer holds abandon_share of the vote: not hopeless
    agreeing = tally(*[("5", 0.1)] * 6, *[(str(100 + i), 0.1) for i in range(6)])
    assert agreeing.share == pytest.approx(0.5)
    assert decide(agreeing, 12, 16, 4, 64, CFG).kind == "continue"
    # never below min_generations
    assert decide(hopeless, 12, 16, 13, 64, CFG).kind == "continue"
    # once the allowance is spent, a hopeless question is not widened: mean < widen_min_score
    assert decide(tally(*[(str(i), 0.1) for i in range(4)]), 16, 16, 4, 64, CFG).kind == "done"


def test_widen_rule() -> None:
    unsure = tally(("5", 0.6), ("6", 0.6), ("5", 0.6), ("6", 0.6))
    assert decide(unsure, 4, 8, 4, 32, CFG).kind == "continue"  # allowance left
    action = decide(unsure, 8, 8, 4, 32, CFG)
    assert action.kind == "widen" and "uncertain" in action.reason
    assert decide(unsure, 8, 8, 4, 8, CFG).kind == "done"  # spent == max
    assert decide(unsure, 8, 8, 4, 32, CFG, can_widen=False).kind == "done"  # no bank
    assert decide(unsure, 8, 8, 4, 32, ControllerConfig(widen_min_score=0.7)).kind == "done"
    low = tally(("5", 0.1), ("6", 0.1), ("5", 0.1), ("6", 0.1))
    assert decide(low, 8, 8, 4, 32, CFG).kind == "done"  # mean below widen_min_score
    exact = tally(("5", 0.2), ("6", 0.2))
    assert decide(exact, 8, 8, 1, 32, ControllerConfig(min_candidates=8)).kind == "widen"  # >= is enough


def test_controller_config_is_validated() -> None:
    for changes, field_ in [
        (dict(stop_share=1.5), "plan.controller.stop_share"),
        (dict(abandon_score=-0.1), "plan.controller.abandon_score"),
        (dict(wave=0), "plan.controller.wave"),
        (dict(window=2.0), "plan.controller.window"),
        (dict(min_candidates=True), "plan.controller.min_candidates"),
        (dict(widen_min_score=float("nan")), "plan.controller.widen_min_score"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            ControllerConfig(**changes)
        assert info.value.field == field_
    with pytest.raises(InvalidArgument) as info:
        ControllerConfig.from_dict({"stop_shares": 0.5})
    assert info.value.field == "plan.controller.stop_shares"


def test_budget_bank() -> None:
    live = {"a", "b", "c"}
    bank = BudgetBank(live=lambda: live)
    assert bank.withdraw(4, "b") == 0
    bank.deposit(3, by="a")
    bank.deposit(0, by="a")
    bank.deposit(-2, by="a")  # nothing negative is ever deposited
    assert bank.balance == 3 and bank.available("b") == 3 and bank.available("a") == 0  # not to itself
    assert bank.withdraw(2, "b") == 2 and bank.withdraw(4, "c") == 1 and bank.withdraw(1, "b") == 0
    assert (bank.balance, bank.deposited, bank.withdrawn) == (0, 3, 3)
    # a deposit funds only the questions running when it was made, and expires with them
    bank.deposit(5, by="a")
    live.discard("a")
    live.add("late")
    assert bank.withdraw(5, "late") == 0
    live.difference_update({"b", "c"})
    bank.expire()
    assert bank.balance == 0
    bank.deposit(5, by="late")  # nobody else is running: nothing to deposit for
    assert bank.balance == 0 and bank.deposited == 8
    live.add("d")
    bank.deposit(2, by="late")
    bank.reset()
    assert bank.balance == 0 and bank.withdraw(1, "d") == 0


# -- 3. adaptive budgets through the real loop -----------------------------------------------

BATCH_BEHAVIOUR = dict(
    answers={
        "easy": const("42"),
        "easy with a floor": const("42"),
        "hopeless": scattered,
        "unsure capped": alternating("5", "6"),
        "unsure": alternating("5", "6"),
    },
    scores={"easy": 0.95, "easy with a floor": 0.95, "hopeless": 0.05, "unsure capped": 0.6, "unsure": 0.6},
)


def batch_configs(strategy: str) -> dict[str, SolveConfig]:
    mode = "adaptive" if strategy == "best_of_n" else None  # auto is adaptive by default

    def cfg(q: str, n: int, **kw: Any) -> SolveConfig:
        return SolveConfig(q, strategy=strategy, generations=n, budget_mode=mode, seed=7, **kw).validate()

    return {
        "easy": cfg("easy", 8),
        "floor": cfg("easy with a floor", 8, min_generations=6),
        "hopeless": cfg("hopeless", 16),
        "capped": cfg("unsure capped", 8, max_generations=10),
        "unsure": cfg("unsure", 8),
    }


@pytest.fixture(params=["best_of_n", "auto"])
def batch(request: pytest.FixtureRequest) -> tuple[SearchLoop, dict[str, SolveConfig], dict[str, list[pb.SolveEvent]]]:
    b = Behaviour(**BATCH_BEHAVIOUR)
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score))
    configs = batch_configs(request.param)
    return loop, configs, run_batch(loop, configs)


def decisions(events: list[pb.SolveEvent], *kinds: str) -> list[pb.Decision]:
    return [d for d in kind(events, "decision") if not kinds or d.kind in kinds]


def test_confident_question_stops_early(batch: Any) -> None:
    _, configs, events = batch
    f = final(events["easy"])
    assert f.answer == "42"
    assert f.stop_reason == "settled" and not f.low_confidence
    assert f.usage.generations == 4 < f.nominal_generations == 8
    (stop,) = decisions(events["easy"], "stop", "abandon", "widen")
    assert stop.kind == "stop" and stop.leader == "42"
    assert stop.candidates == 4 and stop.spent == 4 and stop.nominal == 8
    assert stop.vote_share == pytest.approx(1.0) and stop.stable >= 4
    assert sum(v.count for v in f.votes) == 4


def test_hopeless_question_is_abandoned(batch: Any) -> None:
    _, configs, events = batch
    f = final(events["hopeless"])
    assert f.low_confidence
    assert f.stop_reason == "abandoned"
    assert f.usage.generations == 12 < f.nominal_generations == 16  # abandon_after = 12
    (abandon,) = decisions(events["hopeless"], "stop", "abandon", "widen")
    assert abandon.kind == "abandon" and abandon.candidates == 12
    assert abandon.mean_score == pytest.approx(0.05)
    assert f.answer  # the leader is still returned


def test_uncertain_question_widens_with_what_others_left(batch: Any) -> None:
    loop, configs, events = batch
    f = final(events["unsure"])
    widens = decisions(events["unsure"], "widen")
    assert widens, decisions(events["unsure"])
    assert f.usage.generations > f.nominal_generations == 8
    assert not f.low_confidence and f.stop_reason == ""
    assert f.answer in ("5", "6")
    for w in widens:  # widening happens only once the allowance is spent
        assert w.spent >= 8 and w.allowance > w.spent
    # the bank paid for every generation above a nominal budget, and no more than was deposited
    finals = {job: final(evs) for job, evs in events.items()}
    over = sum(max(0, fi.usage.generations - fi.nominal_generations) for fi in finals.values())
    assert over > 0
    assert loop.bank.withdrawn == over <= loop.bank.deposited
    assert loop.bank.balance == 0  # dropped when the loop went idle


def test_batch_spends_at_most_its_nominal_budgets(batch: Any) -> None:
    _, configs, events = batch
    finals = {job: final(evs) for job, evs in events.items()}
    assert set(finals) == set(configs)
    spent = sum(f.usage.generations for f in finals.values())
    assert spent <= sum(c.generations for c in configs.values())
    for job, f in finals.items():
        assert f.nominal_generations == configs[job].generations
        lo, hi = configs[job].budget_bounds(min_default=4)
        assert f.usage.generations <= hi, job
        # no decision ever reports a spend or an allowance above the question's max
        assert all(d.spent <= hi and d.allowance <= hi for d in decisions(events[job])), job


def test_max_generations_caps_a_widening_question(batch: Any) -> None:
    _, configs, events = batch
    f = final(events["capped"])
    assert 8 <= f.usage.generations <= 10
    assert all(d.allowance <= 10 for d in decisions(events["capped"]))


def test_min_generations_is_never_undercut(batch: Any) -> None:
    _, configs, events = batch
    f = final(events["floor"])
    assert f.stop_reason == "settled" and f.answer == "42"
    assert f.usage.generations >= 6
    stops = decisions(events["floor"], "stop")
    assert len(stops) == 1 and stops[0].spent >= 6
    # the same question without a floor stops at 4 (test_confident_question_stops_early)
    assert final(events["easy"]).usage.generations < f.usage.generations


def test_fixed_best_of_n_is_unchanged_by_the_controller() -> None:
    b = Behaviour(**BATCH_BEHAVIOUR)
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score))
    events = run_batch(loop, {q: SolveConfig(q, generations=8, seed=1) for q in ("easy", "hopeless", "unsure")})
    for q, evs in events.items():
        f = final(evs)
        assert f.usage.generations == 8 and f.stop_reason == "" and not f.low_confidence, q
        assert not decisions(evs)
    assert loop.bank.deposited == 0 and loop.bank.withdrawn == 0


def test_a_lone_uncertain_question_cannot_widen_and_the_bank_is_per_batch() -> None:
    b = Behaviour(**BATCH_BEHAVIOUR)
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score))
    # a question alone saves for nobody ...
    first = run_batch(loop, {"easy": SolveConfig("easy", strategy="auto", generations=16, seed=1)})
    assert final(first["easy"]).usage.generations == 4
    assert loop.bank.deposited == 0 and loop.bank.balance == 0
    # ... so a later uncertain question alone spends its nominal budget and no more
    later = run_batch(loop, {"unsure": SolveConfig("unsure", strategy="auto", generations=8, seed=1)})
    f = final(later["unsure"])
    assert f.usage.generations == 8
    assert not decisions(later["unsure"], "widen")
    assert loop.bank.withdrawn == 0


@pytest.mark.parametrize("seed", range(12))
def test_random_batches_respect_the_budget_invariants(seed: int) -> None:
    """Random mixes of settled, hopeless and uncertain questions, with different solution
    lengths (so waves end on different ticks) and random bounds: every question spends within
    [min, max], and the batch never more than the sum of its nominal budgets."""
    r = random.Random(seed)
    kinds = {
        "easy": (const("42"), 0.95),
        "hopeless": (scattered, 0.05),
        "unsure": (alternating("5", "6"), 0.6),
        "split": (alternating("1", "2", "3"), 0.4),
    }
    configs: dict[str, SolveConfig] = {}
    answers, scores, steps = {}, {}, {}
    for i in range(r.randint(2, 6)):
        k = r.choice(sorted(kinds))
        q = f"{k} #{i}"
        answers[q], scores[q] = kinds[k]
        steps[q] = r.randint(1, 3)
        n = r.choice([4, 6, 8, 12, 16])
        lo = r.choice([None, r.randint(1, n)])
        hi = r.choice([None, r.randint(n, 3 * n)])
        strategy = r.choice(["auto", "best_of_n"])
        configs[q] = SolveConfig(q, strategy=strategy, generations=n, budget_mode="adaptive", min_generations=lo,
                                 max_generations=hi, seed=seed).validate()
    count: dict[str, int] = defaultdict(int)

    def step(parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        q = question(parent)
        if parent.depth + 1 < steps[q]:
            return f"Step {parent.depth + 1}.", False
        count[q] += 1
        return boxed(answers[q](count[q] - 1, parent, rng)), True

    loop = SearchLoop(ScriptedPolicy(step_fn=step), ScriptedVerifier(score_fn=lambda node: scores[question(node)]))
    events = run_batch(loop, configs)
    total = 0
    for q, cfg in configs.items():
        f = final(events[q])
        lo, hi = cfg.budget_bounds(min_default=loop.plan.controller.min_candidates)
        assert lo <= f.usage.generations <= hi, (q, lo, hi, f.usage.generations)
        assert all(d.spent >= lo for d in decisions(events[q], "stop", "abandon")), q
        assert f.low_confidence == (f.stop_reason == "abandoned"), q
        total += f.usage.generations
    assert total <= sum(c.generations for c in configs.values())
    assert loop.bank.withdrawn <= loop.bank.deposited
    assert loop.bank.balance == 0


def test_server_limits_cap_the_default_max() -> None:
    b = Behaviour(**BATCH_BEHAVIOUR)
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score), limits=Limits(max_generations=10))
    configs = {
        "easy": SolveConfig("easy", strategy="auto", generations=16, seed=2),  # leaves 12 in the bank
        "unsure": SolveConfig("unsure", strategy="auto", generations=8, seed=2),  # default max 4 x 8, capped to 10
    }
    events = run_batch(loop, configs)
    started = kind(events["unsure"], "started")[0]
    assert "adaptive [4..10]" in started.plan
    assert final(events["easy"]).usage.generations == 4
    unsure = final(events["unsure"])
    assert decisions(events["unsure"], "widen")
    assert unsure.usage.generations == 10
    assert all(d.allowance <= 10 for d in decisions(events["unsure"]))


# -- 4. auto ---------------------------------------------------------------------------------

EDGES = (0.2, 0.4, 0.6, 0.8)


def table_with(plan: StrategyPlan, pilot: int = 4) -> PlanTable:
    # every bin, 0 (unknown) included, gets the plan (and a decoy under a larger budget that N never reaches)
    decoy = StrategyPlan("dvts", beam_width=2)
    return PlanTable(pilot=pilot, edges=EDGES, plans={b: {2: plan, 1000: decoy} for b in range(0, 6)}, source="test table")


def two_phase_policy() -> ScriptedPolicy:
    """Samples from the first root (the pilot's) answer 3; samples of any later root (a tree
    plan prefills its own) answer 5; the pilot can then be told apart in the votes."""

    def step(parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        if parent.depth < 2:
            return f"Step {parent.depth + 1}: {rng.randrange(1000)}.", False
        return boxed("3" if parent.root.id == 1 else "5"), True

    return ScriptedPolicy(step_fn=step)


@pytest.mark.parametrize(
    "plan",
    [
        StrategyPlan("beam", beam_width=4),
        StrategyPlan("best_of_n"),
        StrategyPlan("lookahead", beam_width=2, lookahead=2),
        StrategyPlan("dvts", beam_width=2),
        StrategyPlan("revision", sequential_ratio=0.5),
        StrategyPlan("hybrid"),
    ],
    ids=lambda p: p.describe(),
)
@pytest.mark.parametrize("n", [8, 11])
def test_auto_fixed_spends_exactly_n(plan: StrategyPlan, n: int) -> None:
    loop = SearchLoop(two_phase_policy(), ScriptedVerifier(score_fn=lambda node: 0.9), plan=table_with(plan))
    cfg = SolveConfig("What is 1 + 2?", strategy="auto", budget_mode="fixed", generations=n, seed=3)
    events = run_batch(loop, {"q": cfg})["q"]
    f = final(events)
    assert f.strategy == "auto"
    assert f.usage.generations == n == f.nominal_generations
    assert f.difficulty_bin == 1  # mean pilot score 0.9 > every edge
    ds = decisions(events)
    assert [d.kind for d in ds] == ["pilot", "plan"]  # fixed: no stop / widen / abandon
    pilot, chosen = ds
    assert pilot.candidates == 4 and pilot.spent == 4 and pilot.difficulty_bin == 1
    assert pilot.mean_score == pytest.approx(0.9)
    assert chosen.plan == plan.describe() and chosen.difficulty_bin == 1
    # Answers tell the phases apart: "3" comes from the pilot's root (the pilot, and best-of-N
    # top-up samples, which reuse it), "5" from the root a tree plan prefills for itself.
    votes = {v.answer: v.count for v in f.votes}
    rest = n - 4
    if plan.strategy == "best_of_n":
        assert votes == {"3": n}
    elif plan.strategy in ("beam", "revision", "hybrid"):
        assert votes == {"3": 4, "5": rest}  # pilot candidates carried into the beam's selection
    elif plan.strategy == "lookahead":
        beams = rest // 3  # k = 2: each beam costs 3 generations; the remainder is topped up
        assert votes == {"3": 4 + rest - 3 * beams, "5": beams}
    else:  # DVTS subtrees may yield more candidates than generations
        assert votes["3"] >= 4 and votes["5"] >= 1


def test_auto_emits_pilot_then_plan_before_anything_else() -> None:
    b = Behaviour(answers={"q": const("42")}, scores={"q": 0.95})
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score))
    events = run_batch(loop, {"q": SolveConfig("q", strategy="auto", generations=8, seed=1)})["q"]
    names = [e.WhichOneof("kind") for e in events]
    d_kinds = [d.kind for d in decisions(events)]
    assert d_kinds[:2] == ["pilot", "plan"] and d_kinds[2:] == ["stop"]
    # the pilot decision follows the pilot's 4 candidates, before the final
    first_decision = names.index("decision")
    assert names[:first_decision].count("candidate") == 4
    assert names.index("final") > max(i for i, n in enumerate(names) if n == "decision")
    pilot = decisions(events, "pilot")[0]
    assert pilot.difficulty_bin == 0  # the default plan has no edges
    f = final(events)
    assert f.difficulty_bin == 0 and f.stop_reason == "settled"
    assert {v.answer: v.count for v in f.votes} == {"42": 4}  # the pilot's votes are the answer's


@pytest.mark.parametrize("mean,expected_bin", [(0.9, 1), (0.7, 2), (0.5, 3), (0.3, 4), (0.1, 5)])
def test_auto_bins_by_pilot_mean_score(mean: float, expected_bin: int) -> None:
    plans = {b: {1: StrategyPlan("best_of_n", selection="majority" if b % 2 else "best")} for b in range(1, 6)}
    table = PlanTable(pilot=2, edges=EDGES, plans=plans)
    loop = SearchLoop(two_phase_policy(), ScriptedVerifier(score_fn=lambda node: mean), plan=table)
    events = run_batch(loop, {"q": SolveConfig("q", strategy="auto", budget_mode="fixed", generations=4, seed=0)})["q"]
    pilot, chosen = decisions(events)
    assert pilot.kind == "pilot" and pilot.candidates == 2 and pilot.difficulty_bin == expected_bin
    assert chosen.plan == plans[expected_bin][1].describe()
    assert final(events).difficulty_bin == expected_bin
    assert final(events).usage.generations == 4


@pytest.mark.parametrize("selection,expected", [("best", "9"), ("weighted", "7"), ("majority", "7")])
def test_auto_answers_with_the_plans_selection(selection: str, expected: str) -> None:
    """A plan cell's selection decides auto's answer: "best" takes the single highest-scored
    sample (a 9 at 0.9) over the answer with more votes and the larger score sum (six 7s at 0.5)."""
    b = Behaviour(answers={"q": alternating("7", "7", "7", "9")}, scores={})
    verifier = ScriptedVerifier(answer_scores={"7": 0.5, "9": 0.9}, score_fn=None)
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), verifier, plan=table_with(StrategyPlan("best_of_n", selection=selection)))
    events = run_batch(loop, {"q": SolveConfig("q", strategy="auto", budget_mode="fixed", generations=8, seed=0)})["q"]
    f = final(events)
    assert decisions(events, "plan")[0].plan == f"best_of_n selection={selection}"
    assert {v.answer: v.count for v in f.votes} == {"7": 6, "9": 2}
    assert f.answer == expected


def test_auto_without_a_verifier_falls_back_to_majority_best_of_n() -> None:
    answers = iter(["9", "7", "7", "9", "7", "7", "7", "9"])

    def step(parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        if parent.depth == 0:
            return "Thinking.", False
        return boxed(next(answers)), True

    policy = ScriptedPolicy(step_fn=step)
    loop = SearchLoop(policy, plan=table_with(StrategyPlan("beam", beam_width=4)))  # no verifier
    events = run_batch(loop, {"q": SolveConfig("q", strategy="auto", budget_mode="fixed", generations=8, seed=0)})["q"]
    assert not kind(events, "error")
    f = final(events)
    pilot, chosen = decisions(events)
    assert pilot.difficulty_bin == 0 and f.difficulty_bin == 0  # no estimate without scores
    assert chosen.plan == "best_of_n selection=majority"
    assert f.answer == "7" and {v.answer: v.count for v in f.votes} == {"7": 5, "9": 3}
    assert f.usage.generations == 8
    assert len(policy.prefill_calls) == 1  # no tree plan ran (it would prefill its own root)


def test_adaptive_auto_without_a_verifier_stops_on_majority() -> None:
    b = Behaviour(answers={"q": const("8")}, scores={})
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step))
    events = run_batch(loop, {"q": SolveConfig("q", strategy="auto", generations=16, seed=0)})["q"]
    f = final(events)
    assert f.answer == "8" and f.stop_reason == "settled" and f.usage.generations == 4


def test_adaptive_auto_with_a_tree_plan_stays_within_bounds() -> None:
    b = Behaviour(answers={"unsure": alternating("5", "6"), "easy": const("42")}, scores={"unsure": 0.6, "easy": 0.95})
    table = table_with(StrategyPlan("beam", beam_width=2))
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score), plan=table)
    configs = {
        "easy": SolveConfig("easy", strategy="auto", generations=8, seed=1),
        "unsure": SolveConfig("unsure", strategy="auto", generations=8, seed=1, max_generations=12),
    }
    events = run_batch(loop, configs)
    easy, unsure = final(events["easy"]), final(events["unsure"])
    # the pilot already settles the easy question: the beam plan never runs
    assert easy.stop_reason == "settled" and easy.usage.generations == 4
    assert [d.kind for d in decisions(events["easy"])] == ["pilot", "plan", "stop"]
    assert 8 <= unsure.usage.generations <= 12
    assert easy.usage.generations + unsure.usage.generations <= 16


# -- 6. rendering ----------------------------------------------------------------------------


def test_render_decision() -> None:
    d = pb.Decision(kind="widen", reason="uncertain: the leader holds 50%", candidates=8, spent=8, allowance=12,
                    nominal=8, vote_share=0.5, mean_score=0.6, leader="5")
    text = render(pb.SolveEvent(job_id="j", decision=d))
    assert "widen" in text and "uncertain: the leader holds 50%" in text
    assert "8 candidates" in text and "8/12 generations" in text and "nominal 8" in text
    assert "leader 5 50%" in text and "mean score 0.60" in text
    # a plan decision has no reason of its own: the plan is shown
    plan = render(pb.SolveEvent(decision=pb.Decision(kind="plan", plan="beam beam_width=4", candidates=4, spent=4,
                                                     allowance=16, nominal=16)))
    assert "plan" in plan and "beam beam_width=4" in plan and "4/16 generations" in plan and "(none)" in plan


def test_render_final_with_spend_and_low_confidence() -> None:
    f = pb.Final(answer="1003", stop_reason="abandoned", nominal_generations=16, low_confidence=True, difficulty_bin=5,
                 strategy="auto")
    f.usage.generations = 12
    f.votes.add(answer="1003", count=1, score=0.05)
    text = render(pb.SolveEvent(final=f))
    assert "Answer: 1003" in text and "abandoned" in text
    assert "low confidence" in text
    assert "Spent: 12 of a nominal 16 generations (75%)" in text
    assert "difficulty bin 5 of 5" in text
    # spend above nominal (widened), no bin, confident
    g = pb.Final(answer="5", nominal_generations=8, strategy="best_of_n")
    g.usage.generations = 12
    text = render(pb.SolveEvent(final=g))
    assert "Spent: 12 of a nominal 8 generations (150%)" in text
    assert "low confidence" not in text and "difficulty bin" not in text
    # a Final without a nominal budget (older workers) shows no spend line
    assert "Spent:" not in render(pb.SolveEvent(final=pb.Final(answer="5")))


def test_render_streams_a_real_adaptive_run() -> None:
    b = Behaviour(answers={"q": const("42")}, scores={"q": 0.95})
    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=b.score))
    events = run_batch(loop, {"q": SolveConfig("q", strategy="auto", generations=8, seed=1)})["q"]
    lines = [render(e) for e in events]
    assert sum(1 for line in lines if line.startswith("◆ ")) == 3  # pilot, plan, stop
    assert any("◆ stop: settled" in line for line in lines)
    assert "Spent: 4 of a nominal 8 generations (50%)" in lines[-1]


# -- review regressions ------------------------------------------------------------------------


def test_one_confident_sample_among_low_scored_dissent_cannot_stop() -> None:
    """With the shipped arith thresholds (8 candidates, window 2, 70%): one answer at 0.99 and
    seven scattered answers at 0.04 hold 78% of the weighted vote, but one vote is not settled."""
    shipped = ControllerConfig(min_candidates=8, window=2, stop_share=0.7, abandon_after=8,
                               abandon_score=0.3, abandon_share=0.5, widen_min_score=0.3)
    t = tally(("9", 0.99), *[(str(100 + i), 0.04) for i in range(7)])
    assert t.share > 0.7 and t.stable >= 2 and t.leader_votes == 1
    assert decide(t, 8, 16, 1, 64, shipped).kind != "stop"
    t = tally(("9", 0.99), *[(None, 0.0)] * 7)  # unparsable samples do not count as agreement
    assert decide(t, 8, 16, 1, 64, shipped).kind != "stop"


def test_majority_selection_settles_on_the_answer_it_returns() -> None:
    """Adaptive best-of-N with selection=majority tallies votes by count: a high-scored minority
    answer cannot be declared settled while the majority returns another one."""
    b = Behaviour(answers={"q": lambda i, p, r: "A" if i % 8 in (0, 3, 6) else "B"}, scores={"q": 0.5})
    scores = {"A": 0.99, "B": 0.1}

    def score(node: Node) -> float:
        return next((s for a, s in scores.items() if f"boxed{{{a}}}" in node.text), 0.5)

    loop = SearchLoop(ScriptedPolicy(step_fn=b.step), ScriptedVerifier(score_fn=score),
                      plan=PlanTable(controller=ControllerConfig(min_candidates=8, window=2, stop_share=0.6)))
    events = run_batch(loop, {"q": SolveConfig("q", strategy="best_of_n", generations=16, budget_mode="adaptive",
                                               selection="majority", seed=1)})
    f = final(events["q"])
    assert f.answer == "B"
    (stop,) = decisions(events["q"], "stop")
    assert stop.leader == f.answer and f.stop_reason == "settled"


def test_auto_keeps_the_requests_selection() -> None:
    """The plan says weighted, the request says majority: a high-scored minority answer (A)
    loses to the majority (B), as the request asked."""
    b = Behaviour(answers={"q": lambda i, p, r: "A" if i % 8 in (0, 3, 6) else "B"}, scores={"q": 0.5})

    def score(node: Node) -> float:
        return 0.99 if "boxed{A}" in node.text else (0.1 if "boxed{B}" in node.text else 0.5)

    def run(selection: str | None) -> pb.Final:
        loop = SearchLoop(ScriptedPolicy(step_fn=Behaviour(b.answers, b.scores).step), ScriptedVerifier(score_fn=score),
                          plan=table_with(StrategyPlan("best_of_n", selection="weighted")))
        cfg = SolveConfig("q", strategy="auto", generations=8, budget_mode="fixed", selection=selection, seed=1)
        return final(run_batch(loop, {"q": cfg})["q"])

    assert run(None).answer == "A"  # the plan's weighted vote
    assert run("majority").answer == "B"  # the request's majority vote


def test_savings_do_not_fund_later_traffic_on_a_busy_loop() -> None:
    """A long unrelated job keeps the loop busy: an auto question settles and deposits for the
    questions running beside it; a question submitted later cannot draw that deposit."""
    b = Behaviour(answers={"easy": const("42"), "unsure": alternating("5", "6")}, scores={"easy": 0.95, "unsure": 0.6})

    def step(parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        if question(parent) == "long":
            return f"Step {parent.depth + 1} of a long one.", parent.depth >= 60
        return b.step(parent, rng, greedy)

    loop = SearchLoop(ScriptedPolicy(step_fn=step), ScriptedVerifier(score_fn=lambda n: b.scores.get(question(n), 0.5)))
    events: dict[str, list[pb.SolveEvent]] = defaultdict(list)
    loop.set_sink(lambda job, evs: events[job].extend(evs))
    loop.submit("long", SolveConfig("long", strategy="best_of_n", generations=1, max_steps=64, seed=1))
    loop.submit("easy", SolveConfig("easy", strategy="auto", generations=16, seed=1))
    for _ in range(12):
        loop.tick()
    assert final(events["easy"]).usage.generations < 16  # settled and gave the rest to "long"'s batch
    loop.submit("unsure", SolveConfig("unsure", strategy="auto", generations=8, seed=1))
    loop.run_until_idle()
    f = final(events["unsure"])
    assert f.usage.generations <= 8 and not decisions(events["unsure"], "widen")
    assert loop.bank.balance == 0
