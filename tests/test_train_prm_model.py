"""The separate PRM model: a directory written by the trainer loads through the service's
``load_prm`` (Math-Shepherd layout, byte-level tag), and the scores it streams step by step equal
the trainer's batched teacher-forced scores — so what was measured offline is what serves."""

from __future__ import annotations

from pathlib import Path

import torch

from ponder.training.mc_labels import LabeledSolution
from ponder.training.prm_model import PrmModelRecipe, prm_model_scores, train_prm_model
from ponder.workers.types import Node, Prompt

SOLS = [
    LabeledSolution("Compute 2 + 3 * 4.", "14", ["3 * 4 = 12\n2 + 12", "2 + 12 = 14", "The answer is \\boxed{14}."], [0.75, 1.0, 1.0], True),
    LabeledSolution("Compute 5 - 1.", "4", ["5 - 1 = 3", "The answer is \\boxed{3}."], [0.0, 0.0], False),
]


def test_prm_model_round_trip(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ponder.workers.prm.model_prm import load_prm

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    out = tmp_path / "prm"
    summary = train_prm_model(model, tok, SOLS, SOLS, PrmModelRecipe(steps=4, batch=2, eval_every=2), out, "test")
    assert (out / "ponder_prm.json").exists() and not (out / "ponder.json").exists()
    assert summary["val_bce"] > 0

    prm = load_prm(out)  # checks that the tag tokenises to one id after a step
    trained = AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    offline = prm_model_scores(trained, tok, SOLS)
    for sol, want in zip(SOLS, offline):
        root = Node(id=0, parent=None, depth=0, prompt=Prompt(sol.question))
        node, got = root, []
        for i, step in enumerate(sol.steps):
            node = Node(id=i + 1, parent=node, depth=i + 1, text=step + "\n\n")
            (score,) = prm.score([node], "last").scores
            node.n_scored, node.aggregate = 1, score
            got.append(score)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=2e-3, rtol=0)


def test_grouped_batches_hold_every_sample_of_their_questions() -> None:
    import random

    from ponder.training.prm_model import _batches

    sols = [LabeledSolution(f"Q{q}", "1", ["x"], [1.0], bool(k % 2)) for q in range(10) for k in range(4)]
    batches = _batches(sols, PrmModelRecipe(questions_per_batch=3), random.Random(0))
    seen: set[str] = set()
    for _ in range(3):  # one pass: 3 batches of 3 whole questions (the 10th waits for the next pass)
        idx = next(batches)
        qs = {sols[i].question for i in idx}
        assert len(qs) == 3 and len(idx) == 12 and not qs & seen
        seen |= qs
    plain = _batches(sols, PrmModelRecipe(batch=5), random.Random(0))
    assert all(len(next(plain)) == 5 for _ in range(20))


def test_grouped_auc_compares_samples_of_the_same_question_only() -> None:
    import math

    from ponder.training.prm import grouped_auc

    # question A: right samples score above wrong ones; question B: below. Across questions the
    # scores would separate perfectly (A's are all higher), within them it is one win, one loss.
    scores = [0.9, 0.8, 0.3, 0.4]
    right = [True, False, True, False]
    groups = ["A", "A", "B", "B"]
    assert grouped_auc(scores, right, groups) == 0.5
    assert grouped_auc([0.9, 0.8], [True, False], ["A", "A"]) == 1.0
    assert grouped_auc([0.5, 0.5], [True, False], ["A", "A"]) == 0.5
    assert math.isnan(grouped_auc([0.9, 0.1], [True, True], ["A", "A"]))  # no wrong sample to compare with
