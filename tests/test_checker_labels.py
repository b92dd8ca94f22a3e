"""Checker labels (``ponder train prm --label-kind checker``): synthetic slipped solutions made
from training questions only, every slip really changes what its step says, and the labels are
exactly the checker's (the slipped step and every later one bad)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from ponder.tasks import arith
from ponder.training import checker_labels as cl


@pytest.fixture(scope="module")
def train_questions() -> list[arith.Question]:
    return arith.questions("train", 150, seed=3, mix=arith.EVAL_MIX)


def test_parse_expression_inverts_the_generator(train_questions: list[arith.Question]) -> None:
    for q in train_questions:
        steps, _ = arith.solve(arith.parse_expression(q.expression))
        assert steps == list(q.steps)
    with pytest.raises(ValueError):
        arith.parse_expression("2 ** 3")


@pytest.mark.parametrize("kind", [k for k, _ in cl.RESULT_SLIPS])
def test_every_slip_changes_the_value(kind: str) -> None:
    rng = random.Random(kind)
    made = 0
    for value in [0, 3, 7, 10, 12, 46, 99, 100, 128, 305, 999]:
        for _ in range(5):
            out = cl.slip_value(value, kind, rng)
            if out is None:
                continue
            made += 1
            assert out != value and out >= 0
            assert str(out) == str(int(str(out)))  # no leading zero
    assert made > 0


def test_a_corruption_is_labelled_exactly(train_questions: list[arith.Question]) -> None:
    rng = random.Random(0)
    kinds: set[str] = set()
    for q in train_questions:
        c = cl.corrupt(q, rng)
        assert c is not None
        steps, k = c.solution.steps, c.step
        kinds.add(c.kind.split(":")[0])
        # Exact labels: good before the slip, bad from it on; the slipped step fails the checker.
        assert c.solution.labels == [1.0] * k + [0.0] * (len(steps) - k)
        assert c.solution.labels == arith.step_labels(steps, q.answer)
        assert not arith.step_valid(steps[k], q.answer)
        # Before the slip, the worked solution itself; at the slip, a different step.
        assert steps[:k] == list(q.steps[:k]) and steps[k] != q.steps[k]
        eq, *rest = steps[k].split("\n")
        a, op, b, shown = arith._EQUATION.match(eq).groups()  # type: ignore[union-attr]
        true = arith._apply(int(a), op, int(b))
        if c.kind.startswith("result:"):
            assert int(shown) != true  # the value really changed
        else:  # a true equation, but the restated remainder no longer evaluates to the answer
            assert int(shown) == true and arith._value(rest[0]) != int(q.answer)
        if c.propagated:  # later steps carry the wrong value on consistently: their equations hold
            for later in steps[k + 1 : -1]:
                a, op, b, res = arith._EQUATION.match(later.split("\n")[0]).groups()  # type: ignore[union-attr]
                assert arith._apply(int(a), op, int(b)) == int(res)
        assert c.solution.correct == (arith.extract_answer(steps[-1]) == q.answer)
    assert kinds == {"result", "remainder"}


def test_groups_come_from_the_training_split_only(train_questions: list[arith.Question]) -> None:
    for g in itertools.islice(cl.groups(3, seed=5), 60):
        assert arith.split_of(g[0].question) == "train"
        assert g[0].labels == [1.0] * len(g[0].steps) and g[0].correct
        assert 2 <= len(g) <= 4 and len({s.text() for s in g}) == len(g)
        assert all(0.0 in s.labels and s.question == g[0].question for s in g[1:])
    test_q = arith.questions("test", 1, seed=0)[0]
    with pytest.raises(ValueError, match="training"):
        cl.group(test_q, 3, random.Random(0))


def test_prm_model_trains_on_synthetic_groups(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ponder.training.prm_model import PrmModelRecipe, train_prm_model

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    val = [s for g in itertools.islice(cl.groups(2, seed=1), 2) for s in g]
    seen: list[int] = []

    def synthetic():  # type: ignore[no-untyped-def]
        for g in cl.groups(2, seed=2):
            seen.append(len(g))
            yield g

    recipe = PrmModelRecipe(steps=2, eval_every=1, synthetic_groups=2, select="within_auc")
    summary = train_prm_model(model, tok, [], val, recipe, tmp_path / "prm", "test", synthetic=synthetic(), meta={"labels": "checker"})
    assert len(seen) == 4  # 2 groups per step, 2 steps, no policy samples
    assert summary["labels"] == "checker" and len(summary["val_within_question_auc_min"]) == 3
    assert (tmp_path / "prm" / "ponder_prm.json").exists()


def test_checker_labels_need_a_model_out() -> None:
    from ponder.proto.errors import InvalidArgument
    from ponder.training.prm import main

    with pytest.raises(InvalidArgument):
        main(["--label-kind", "checker"])
