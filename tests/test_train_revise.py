"""``train revise``'s data and early stopping: attempts-in-context counts balanced over 0..4, plain
(no-attempt) examples mixed in on fresh questions, right/wrong attempt pools, and the checkpoint
kept being the best held-out one (a scripted evaluation stands in for the revision chains)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from ponder.tasks import arith
from ponder.training import revise
from ponder.training.checkpoint import EOS_ID, byte_tokenizer
from ponder.training.grading import Samples
from ponder.training.train_policy import prompt_format
from ponder.training.revise_eval import ChainResult, EarlyStopping, held_out_score
from ponder.training.sft import Example


def test_balanced_ks_spread_every_count_equally() -> None:
    ks = revise.balanced_ks(101, 3, random.Random(0))
    assert len(ks) == 101 and all(len(row) == 3 for row in ks)
    counts = Counter(k for row in ks for k in row)
    assert set(counts) == {1, 2, 3, 4} and max(counts.values()) - min(counts.values()) <= 1


def test_revision_trajectories_draw_distinct_attempts_from_the_pool() -> None:
    rng = random.Random(1)
    target = "2 + 3 = 5\n\nThe answer is \\boxed{5}."
    pool = [target, "2 + 3 = 6\n\nThe answer is \\boxed{6}.", "x", "yy"]
    for order in revise.ORDERS:
        trajs = revise.revision_trajectories("Compute 2 + 3.", target, pool, [1, 2, 3, 4, 6], rng, order)
        assert [len(t.attempts) for t in trajs] == [1, 2, 3, 4, 4]  # capped at the pool's size
        for t in trajs:
            assert t.target == target and len(set(t.attempts)) == len(t.attempts) and set(t.attempts) <= set(pool)
            if order == "closest_last":
                d = [revise.edit_distance(a, target) for a in t.attempts]
                assert d[-1] == min(d)
    # random order: the closest attempt is not always last
    lasts = {revise.revision_trajectories("q", target, pool, [4], rng, "random")[0].attempts[-1] for _ in range(40)}
    assert len(lasts) > 1
    assert revise.revision_trajectories("q", target, [], [1, 2], rng) == []
    with pytest.raises(Exception):
        revise.revision_trajectories("q", target, pool, [1], rng, "sideways")


def _fake_samples(qs: list[arith.Question], n: int) -> Samples:
    """Question i: right i % 3 times of ``n`` (so some are never right), the rest a slip or no answer."""
    texts, correct = [], []
    for i, q in enumerate(qs):
        row, grades = [], []
        for j in range(n):
            if j < i % 3:
                row.append(q.solution)
                grades.append(True)
            elif j == n - 1 and i % 5 == 0:
                row.append("no answer here")
                grades.append(False)
            else:
                row.append(f"{q.expression} = {j}\n\nThe answer is \\boxed{{{int(q.answer) + 1 + j}}}.")
                grades.append(False)
        texts.append(row)
        correct.append(grades)
    return Samples(list(qs), texts, correct)


@pytest.mark.parametrize("context", ["mixed", "wrong"])
def test_sample_trajectories_balance_and_target_the_worked_solution(monkeypatch: Any, context: str) -> None:
    calls: list[int] = []

    def fake(model: Any, tok: Any, fmt: Any, qs: list[arith.Question], n: int, **kw: Any) -> Samples:
        calls.append(n)
        if "progress" in kw and kw["progress"] is not None:
            kw["progress"].update(len(qs) * n)
        return _fake_samples(qs, n)

    monkeypatch.setattr(revise, "sample_solutions", fake)
    recipe = revise.ReviseRecipe(questions=60, samples=5, per_question=2, context=context)
    trajs, stats = revise.sample_trajectories(None, None, prompt_format(), recipe)
    assert calls == [5]
    qs = {q.question: q for q in arith.questions("train", 60, seed=recipe.seed + 7, mix=arith.EVAL_MIX)}
    assert all(t.target == qs[t.question].solution for t in trajs)
    assert all(1 <= len(t.attempts) <= 4 for t in trajs) and "no answer here" not in {a for t in trajs for a in t.attempts}
    by_k = stats["attempts_in_context"]
    assert by_k[0] == 0 and sum(by_k.values()) == len(trajs) == stats["trajectories"]
    if context == "mixed":
        # every question has >= 4 parsable samples: 2 trajectories each, 1..4 equally often
        assert len(trajs) == 120 and max(by_k[k] for k in (1, 2, 3, 4)) - min(by_k[k] for k in (1, 2, 3, 4)) <= 1
        assert 0.0 < stats["correct_share_of_attempts_in_context"] < 1.0
    else:
        assert stats["correct_share_of_attempts_in_context"] == 0.0
        assert all(not arith.grade(a, qs[t.question].answer) for t in trajs for a in t.attempts)
    assert stats["correct_samples"] == sum(i % 3 for i in range(60))


def test_examples_mix_plain_questions_in_at_the_given_share() -> None:
    tok, fmt = byte_tokenizer(), prompt_format()
    qs = arith.questions("train", 20, seed=3, mix=arith.EVAL_MIX)
    trajs = [revise.Trajectory(q.question, ("1 + 1 = 3",) * (1 + i % 4), q.solution) for i, q in enumerate(qs)]
    counts: dict[int, int] = {}
    drawn = list(itertools.islice(revise.examples(tok, fmt, trajs, 0, plain_share=0.2, counts=counts), 1000))
    assert sum(counts.values()) == 1000 and 0.15 < counts[0] / 1000 < 0.25
    assert all(counts[k] > 150 for k in (1, 2, 3, 4))
    plain = [e for e in drawn if "Attempt" not in tok.decode(e.prompt)]
    assert len(plain) == counts[0]
    texts = [tok.decode(e.prompt) for e in plain]
    assert len(set(texts)) > 0.9 * len(texts)  # fresh questions, not a few repeated
    assert not set(texts) & {f"{q.question}\n\n" for q in qs}
    assert all(tok.decode(e.prompt).endswith("\n\n") and e.target[-1] == EOS_ID for e in plain)
    assert all("\\boxed{" in tok.decode(e.target[:-1]) for e in plain)  # worked solutions as targets
    # no trajectories: plain examples only
    only = list(itertools.islice(revise.examples(tok, fmt, [], 0, plain_share=0.0), 5))
    assert all("Revise" not in tok.decode(e.prompt) for e in only)


def test_early_stopping_bookkeeping() -> None:
    es = EarlyStopping(patience=2)
    assert es.update(0, 0.3) == (True, False)
    assert es.update(50, 0.5) == (True, False)
    assert es.update(100, (0.51 + 0.479 + 0.479 + 0.458) / 4 - 0.4815 + 0.5) == (True, False)  # a tie: the later one
    assert es.update(150, 0.4) == (False, False)
    assert es.update(200, 0.45) == (False, True)
    assert es.best_step == 100 and es.best_score == pytest.approx(0.5)
    strict = EarlyStopping(patience=1, min_delta=0.01)
    assert strict.update(0, 0.5) == (True, False) and strict.update(1, 0.505) == (False, True)
    assert held_out_score([0.4, 0.5, 0.6, 0.7]) == pytest.approx(0.55)
    assert ChainResult([[True, False], [True, True]]).pass_at_1_by_step() == [1.0, 0.5]


def _tiny_model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def test_fit_keeps_the_best_held_out_checkpoint_and_stops_after_patience() -> None:
    model = _tiny_model()
    batches = itertools.repeat([Example([3, 4, 5], [6, 7, 2])] * 4)
    scores = iter([[0.2, 0.2], [0.3, 0.5], [0.6, 0.7], [0.5, 0.5], [0.6, 0.6], [0.1, 0.1], [0.9, 0.9]])
    seen: list[dict[str, torch.Tensor]] = []

    def scripted(m: Any) -> list[float]:
        assert not m.training  # evaluated in eval mode
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    recipe = revise.ReviseRecipe(steps=100, eval_every=5, patience=3, lr=1e-2, warmup=1)
    out = revise.fit_with_early_stopping(model, batches, recipe, scripted)
    steps = [c["step"] for c in out["curve"]]
    assert steps == [0, 5, 10, 15, 20, 25]  # the 0.9 at step 30 is never reached
    assert out["chosen_step"] == 10 and out["best_score"] == pytest.approx(0.65)
    assert out["stopped_early"] and out["fit"]["steps_run"] == 25
    best = seen[2]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, seen[-1][k]) for k, v in model.state_dict().items())  # later weights moved on
    assert not model.training


def test_fit_that_only_gets_worse_keeps_the_starting_weights() -> None:
    model = _tiny_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batches = itertools.repeat([Example([3, 4, 5], [6, 7, 2])] * 4)
    recipe = revise.ReviseRecipe(steps=12, eval_every=4, patience=5, lr=1e-2, warmup=1)
    falling = iter([[0.5], [0.4], [0.3], [0.2]])
    out = revise.fit_with_early_stopping(model, batches, recipe, lambda m: next(falling))
    assert [c["step"] for c in out["curve"]] == [0, 4, 8, 12] and out["chosen_step"] == 0
    assert not out["stopped_early"]
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_attempt_views_show_what_each_step_computed_or_the_answer() -> None:
    """--attempt-view: the reviser's prompt can carry an earlier attempt whole, as the value
    each step computed (short prompts, aligned step by step across attempts), or as its answer;
    the template is what the reviser's ponder.json saves, so the revision strategy builds the
    same prompt at inference."""
    import dataclasses

    from ponder.workers.models import format_prompt

    q = arith.questions("test", 1, seed=0)[0]
    cut = arith.STEP_DELIMITER.join(q.solution.split(arith.STEP_DELIMITER)[:2])  # no answer yet
    steps = q.solution.split(arith.STEP_DELIMITER)
    values = [s.split("=", 1)[1].split()[0] for s in steps if "=" in s]
    fmts = {v: dataclasses.replace(prompt_format(), attempt_template=t) for v, t in revise.ATTEMPT_VIEWS.items()}
    assert fmts["full"] == prompt_format()  # the default view is the committed reviser's format
    shown = format_prompt(None, fmts["results"], q.question, (q.solution, cut))
    assert shown == (f"Attempt 1: {', '.join(values)}\nAttempt 2: {', '.join(values[:2])}\n"
                     f"Revise: {q.question}\n\n")
    assert format_prompt(None, fmts["answer"], q.question, (q.solution, cut)) == (
        f"Attempt 1: {q.answer}\nAttempt 2: ?\nRevise: {q.question}\n\n")
    assert len(shown) < len(format_prompt(None, fmts["full"], q.question, (q.solution, cut))) / 3
    with pytest.raises(SystemExit):
        revise.parser().parse_args(["--attempt-view", "diff"])


def test_a_scored_view_shows_each_attempts_score_and_puts_the_best_last() -> None:
    """--attempt-view scored: each earlier attempt with the verifier's score in percent, sorted by
    it (the best last, unscored first, ties in chain order), the best four kept; the format says
    it reads scores, and a bad order in a ponder.json is refused."""
    from ponder.proto.errors import InvalidArgument
    from ponder.workers.models import PromptFormat, format_prompt

    fmt = dataclasses.replace(prompt_format(), attempt_template=revise.ATTEMPT_VIEWS["scored"],
                              attempt_order=revise.ATTEMPT_ORDER["scored"])
    assert fmt.reads_scores and not prompt_format().reads_scores
    sols = [f"1 + {k} = {1 + k}\n\nThe answer is \\boxed{{{1 + k}}}." for k in range(6)]
    shown = format_prompt(None, fmt, "Compute 1 + k.", tuple(sols[:3]), (0.5, None, 0.934))
    assert shown == "Attempt 1 (?): 2\nAttempt 2 (50): 1\nAttempt 3 (93): 3\nRevise: Compute 1 + k.\n\n"
    # six attempts: the four best-scored kept, the lowest of them first; a tie keeps chain order
    shown = format_prompt(None, fmt, "Q", tuple(sols), (0.9, 0.1, 0.7, 0.2, 0.7, 0.95))
    assert shown.splitlines()[:4] == ["Attempt 1 (70): 3", "Attempt 2 (70): 5", "Attempt 3 (90): 1", "Attempt 4 (95): 6"]
    # in chain order (every other view) the scores change nothing but the {score} field
    chain = dataclasses.replace(fmt, attempt_order="chain")
    assert format_prompt(None, chain, "Q", tuple(sols[:2]), (0.9, 0.1)).startswith("Attempt 1 (90): 1\nAttempt 2 (10): 2\n")
    # --attempt-view scored_full: each attempt's whole text under its score, the same order
    full = dataclasses.replace(prompt_format(), attempt_template=revise.ATTEMPT_VIEWS["scored_full"],
                               attempt_order=revise.ATTEMPT_ORDER["scored_full"])
    assert full.reads_scores
    shown = format_prompt(None, full, "Q", tuple(sols[:2]), (0.9, 0.1))
    assert shown == f"Attempt 1 (10):\n{sols[1]}\n\nAttempt 2 (90):\n{sols[0]}\n\nRevise: Q\n\n"
    with pytest.raises(InvalidArgument) as err:
        PromptFormat(attempt_order="newest")
    assert err.value.field == "attempt_order"
    with pytest.raises(InvalidArgument) as err:  # scores exist only in chains run through the search loop
        revise.train_reviser(revise.ReviseRecipe(attempt_view="scored"), revise.DEFAULT_POLICY, Path("/nonexistent/r"), "cmd")
    assert err.value.field == "attempt_view"


def test_revision_chains_return_each_attempt_and_show_it_to_the_next(monkeypatch: Any) -> None:
    """Attempt k+1's prompt holds attempt k as the reviser's format shows it; the chain's
    attempts come back (the steps up to the answer) beside their grades."""
    from ponder.training import revise_eval

    tok = byte_tokenizer()
    fmt = dataclasses.replace(prompt_format(), attempt_template=revise.ATTEMPT_VIEWS["results"])
    qs = arith.questions("train", 2, seed=4, mix=arith.EVAL_MIX)
    prompts_seen: list[list[str]] = []

    def fake_generate(model: Any, prompts: Any, **kw: Any) -> list[list[int]]:
        prompts_seen.append([tok.decode(p) for p in prompts])
        k = len(prompts_seen)  # attempt 1 wrong, attempt 2 right, for both questions
        outs = [q.solution if k == 2 else f"{q.expression} = 7\n\nThe answer is \\boxed{{{int(q.answer) + 7}}}." for q in qs]
        return [list(tok.encode(o)) + [EOS_ID] for o in outs]

    monkeypatch.setattr(revise_eval, "generate", fake_generate)
    bar = _Bar()
    res = revise_eval.revision_chains(None, tok, fmt, qs, 1, 2, progress=bar)
    assert res.correct == [[False, True], [False, True]] and bar.n == 4
    assert [a[1] for a in res.attempts] == [q.solution for q in qs]
    assert all("Attempt" not in p for p in prompts_seen[0])
    for q, p in zip(qs, prompts_seen[1]):
        assert "Attempt 1: 7\n" in p and p.endswith(f"Revise: {q.question}\n\n")  # attempt 1's step result


class _Bar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k


def test_chain_context_holds_each_chain_prefix_in_order(monkeypatch: Any) -> None:
    """--context chain: a trajectory's attempts are the first k of the starting reviser's own
    chain on that question, in chain order; k is balanced over 1..4; the target is the worked
    solution; the stats give the chain's pass@1 by attempt."""
    n = 40

    def fake_chains(model: Any, tok: Any, fmt: Any, qs: Any, chains: int, steps: int, **kw: Any) -> ChainResult:
        assert chains == 1 and steps == 4
        kw["progress"].update(len(qs) * steps)
        return ChainResult([[(i + k) % 3 == 0 for k in range(steps)] for i in range(len(qs))],
                           [[f"q{i} attempt {k + 1}" for k in range(steps)] for i in range(len(qs))])

    monkeypatch.setattr(revise, "revision_chains", fake_chains)
    recipe = revise.ReviseRecipe(questions=n, samples=4, per_question=2, context="chain")
    trajs, stats = revise.sample_trajectories(None, None, prompt_format(), recipe, stage=1)
    # a second stage: questions the first stage (seed + 7) did not train on
    qs = arith.questions("train", n, seed=recipe.seed + 1007, mix=arith.EVAL_MIX)
    assert stats["question_seed"] == recipe.seed + 1007
    assert not {q.question for q in qs} & {q.question for q in arith.questions("train", n, seed=recipe.seed + 7, mix=arith.EVAL_MIX)}
    index = {q.question: i for i, q in enumerate(qs)}
    assert len(trajs) == 2 * n == stats["trajectories"]
    for t in trajs:
        i = index[t.question]
        assert t.attempts == tuple(f"q{i} attempt {k + 1}" for k in range(len(t.attempts))) and t.target == qs[i].solution
    by_k = stats["attempts_in_context"]
    assert by_k[0] == 0 and max(by_k[k] for k in (1, 2, 3, 4)) - min(by_k[k] for k in (1, 2, 3, 4)) <= 1
    assert stats["chain_pass_at_1_by_attempt"] == [sum((i + k) % 3 == 0 for i in range(n)) / n for k in range(4)]
    assert stats["correct_samples"] + stats["wrong_samples"] == 4 * n


def test_scored_context_holds_chain_prefixes_with_their_scores(monkeypatch: Any) -> None:
    """--context scored: a trajectory holds the first k attempts of a chain run through the search
    loop (the policy's first attempt, the starting reviser's revisions) with each attempt's score."""
    n, seen = 20, {}

    def fake_loop_chains(policy: Path, reviser: Path, qs: Any, chains: int, attempts: int, **kw: Any) -> Any:
        seen.update(policy=policy, reviser=reviser, chains=chains, attempts=attempts)
        return [[revise.Attempt(f"q{i} attempt {k + 1}", k / 10 if k else None, (i + k) % 2 == 0) for k in range(attempts)]
                for i in range(len(qs))]

    monkeypatch.setattr(revise, "loop_chains", fake_loop_chains)
    recipe = revise.ReviseRecipe(questions=n, samples=4, per_question=2, context="scored")
    from ponder.proto.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as err:  # it revises with the starting reviser, which must be named
        revise.sample_trajectories(None, None, prompt_format(), recipe, stage=2)
    assert err.value.field == "context"
    trajs, stats = revise.sample_trajectories(None, None, prompt_format(), recipe, stage=2, start=Path("r"))
    assert seen == {"policy": revise.DEFAULT_POLICY, "reviser": Path("r"), "chains": 1, "attempts": 4}
    qs = arith.questions("train", n, seed=recipe.seed + 2007, mix=arith.EVAL_MIX)
    index = {q.question: i for i, q in enumerate(qs)}
    assert len(trajs) == 2 * n and stats["question_seed"] == recipe.seed + 2007
    for t in trajs:
        i, k = index[t.question], len(t.attempts)
        assert t.attempts == tuple(f"q{i} attempt {j + 1}" for j in range(k)) and t.target == qs[i].solution
        assert t.scores == tuple(j / 10 if j else None for j in range(k))
    assert stats["chain_pass_at_1_by_attempt"] == [sum((i + k) % 2 == 0 for i in range(n)) / n for k in range(4)]


def test_loop_chains_run_as_a_worker_runs_them() -> None:
    """The chains behind --context scored, for real: the arith policy's first attempt and the
    reviser's revisions through the engine and the search loop, scored by the default verifier."""
    qs = arith.questions("validation", 2, seed=3, mix=arith.EVAL_MIX)
    chains = revise.loop_chains(revise.DEFAULT_POLICY, revise.DEFAULT_OUT, qs, 2, 2, seed=0, temperature=0.8, progress=False)
    assert len(chains) == 4 and all(len(c) == 2 for c in chains)
    for i, chain in enumerate(chains):
        q = qs[i // 2]
        for a in chain:
            assert a.score is not None and 0.0 <= a.score <= 1.0
            assert a.correct == arith.grade(a.solution, q.answer)


def test_chain_context_refuses_a_start_that_is_not_such_a_reviser(monkeypatch: Any, tmp_path: Any) -> None:
    """Chains need the starting model to read attempts the way the new reviser will: a policy
    checkpoint (another attempt template) is refused before anything is sampled or written."""
    from ponder.proto.errors import InvalidArgument

    monkeypatch.setattr(revise, "load_checkpoint", lambda path: (None, None, prompt_format()))
    monkeypatch.setattr(revise, "sample_trajectories", lambda *a, **k: pytest.fail("sampled"))
    recipe = revise.ReviseRecipe(context="chain", attempt_view="results")
    with pytest.raises(InvalidArgument) as err:
        revise.train_reviser(recipe, tmp_path / "policy", tmp_path / "out" / "reviser", "cmd")
    assert err.value.field == "context" and "--attempt-view results" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_reviser_trained_from_a_reviser_records_every_stage(tmp_path: Any) -> None:
    """Stage 2 started from a reviser carries stage 1's summary (earliest first); a policy start
    has none; the quality page shows a row per stage."""
    import json

    from ponder.training.quality_doc import reviser_stages

    policy, stage1, stage2 = tmp_path / "policy", tmp_path / "r1", tmp_path / "r2"
    for d in (policy, stage1, stage2):
        d.mkdir()
    (policy / "train.json").write_text(json.dumps({"command": "ponder train policy", "wall_seconds": 9}))
    s1 = {"command": "ponder train revise", "recipe": {"attempt_view": "results"}, "wall_seconds": 60}
    (stage1 / "train.json").write_text(json.dumps(s1))
    s2 = {"command": "ponder train revise --context chain", "recipe": {"attempt_view": "results"},
          "earlier_stages": [s1], "wall_seconds": 30}
    (stage2 / "train.json").write_text(json.dumps(s2))
    assert revise.earlier_stages(policy) == [] and revise.earlier_stages(tmp_path / "none") == []
    assert revise.earlier_stages(stage1) == [s1]
    s2_alone = {k: v for k, v in s2.items() if k != "earlier_stages"}
    assert revise.earlier_stages(stage2) == [s1, s2_alone]  # a third stage would list both
    rows = reviser_stages({**s2_alone, "earlier_stages": [s1]})
    assert [(name, t["command"]) for name, t, _ in rows] == [
        ("reviser, stage 1 of 2", "ponder train revise"), ("reviser, stage 2 of 2", "ponder train revise --context chain")]
    assert [name for name, _, _ in reviser_stages(s1)] == ["reviser"] and reviser_stages({}) == []


def test_scored_chains_are_saved_and_reused_only_for_the_same_run(monkeypatch: Any, tmp_path: Any) -> None:
    """--chains-file: the first run draws the chains and writes them; a second run with the same
    recipe reads them back without drawing; a run that would draw other chains (another seed) is
    refused with the field named instead of training on the wrong chains, as is one whose model
    files changed (a refitted calibration); a context that draws no chains refuses the flag."""
    from ponder.proto.errors import InvalidArgument

    draws: list[int] = []

    def fake_loop_chains(policy: Path, reviser: Path, qs: Any, chains: int, attempts: int, **kw: Any) -> Any:
        draws.append(len(qs))
        return [[revise.Attempt(f"q{i} a{k}", 0.5 if k else None, k % 2 == 1) for k in range(attempts)]
                for i in range(len(qs))]

    monkeypatch.setattr(revise, "loop_chains", fake_loop_chains)
    path = tmp_path / "chains.json"
    recipe = revise.ReviseRecipe(questions=6, samples=3, context="scored", chains_file=str(path))
    qs = arith.questions("train", 6, seed=1, mix=arith.EVAL_MIX)
    first = revise.cached_loop_chains(recipe, Path("r"), qs)
    assert draws == [6] and path.exists() and not path.with_name("chains.json.tmp").exists()
    again = revise.cached_loop_chains(recipe, Path("r"), qs)
    assert draws == [6] and again == first  # read back, not drawn
    with pytest.raises(InvalidArgument) as err:
        revise.cached_loop_chains(dataclasses.replace(recipe, seed=9), Path("r"), qs)
    assert err.value.field == "chains_file" and draws == [6]
    # without a file nothing is written and every call draws
    revise.cached_loop_chains(dataclasses.replace(recipe, chains_file=None), Path("r"), qs)
    assert draws == [6, 6]
    # the key covers every file of both models (a refitted calibration changes the scores)
    model = tmp_path / "reviser"
    model.mkdir()
    (model / "likelihood-arith-large.json").write_text("{}")
    other = dataclasses.replace(recipe, chains_file=str(tmp_path / "other.json"))
    revise.cached_loop_chains(other, model, qs)
    (model / "likelihood-arith-large.json").write_text('{"refitted": true}')
    with pytest.raises(InvalidArgument):
        revise.cached_loop_chains(other, model, qs)
    assert revise.chains_key(recipe, Path("r"), qs)["verifier"] == "likelihood:arith-large"
    monkeypatch.setattr(revise, "load_checkpoint", lambda path: pytest.fail("a model loaded"))
    with pytest.raises(InvalidArgument) as err:  # only --context scored draws chains to save; refused before any load
        revise.train_reviser(dataclasses.replace(recipe, context="mixed"), revise.DEFAULT_POLICY, tmp_path / "out", "cmd")
    assert err.value.field == "chains_file" and draws == [6, 6, 6]
