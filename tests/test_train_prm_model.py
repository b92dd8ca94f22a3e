"""The separate PRM model: a directory written by the trainer loads through the service's
``load_prm`` (Math-Shepherd layout, byte-level tag), and the scores it streams step by step equal
the trainer's batched teacher-forced scores — so what was measured offline is what serves."""

from __future__ import annotations

from pathlib import Path

import torch

from ponder.workers.train.mc_labels import LabeledSolution
from ponder.workers.train.prm_model import PrmModelRecipe, prm_model_scores, train_prm_model
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
