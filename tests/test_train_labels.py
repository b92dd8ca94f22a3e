"""Training-data builders: Monte Carlo step labels on a scripted policy, the step-end features
the value head trains on, the revision-trajectory builder, and the bulk sampler against
transformers."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from ponder.tasks.arith import Knobs, Question
from ponder.training.mc_labels import cut_steps, grade_text, mc_label, step_features
from ponder.training.revise import build_trajectories, edit_distance

Q = Question("Compute 2 + 3 * 4.", "2 + 3 * 4", ("3 * 4 = 12\n2 + 12", "2 + 12 = 14", "The answer is \\boxed{14}."), "14", Knobs(2, 1))
RIGHT = "3 * 4 = 12\n2 + 12\n\n2 + 12 = 14\n\nThe answer is \\boxed{14}."
WRONG_FIRST = "3 * 4 = 13\n2 + 13\n\n2 + 13 = 15\n\nThe answer is \\boxed{15}."
NO_ANSWER = "3 * 4 = 12\n2 + 12\n\n2 + 12 = 14"


class ScriptedRollouts:
    """From scratch: RIGHT, WRONG_FIRST, NO_ANSWER in turn. From a prefix: a prefix holding
    the wrong product always ends wrong; a clean prefix ends right 3 times out of 4."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.n = 0

    def __call__(self, questions: Sequence[str], prefixes: Sequence[str], seed: int) -> list[str]:
        out = []
        for q, p in zip(questions, prefixes):
            self.calls.append((q, p))
            if not p:
                out.append([RIGHT, WRONG_FIRST, NO_ANSWER][len(out) % 3])
                continue
            self.n += 1
            done = p.rstrip("\n").split("\n\n")
            full = (WRONG_FIRST if "13" in p else RIGHT).split("\n\n")
            rest = "\n\n".join(full[len(done) :])
            if "13" not in p and self.n % 4 == 0:
                rest = rest.replace("14", "41")
            out.append(rest)
        return out


def test_mc_labels_on_a_scripted_policy() -> None:
    roll = ScriptedRollouts()
    sols, counts = mc_label([Q], roll, samples=3, rollouts_per_step=4, seed=0)
    assert counts == {"sampled": 3, "kept": 2, "dropped": 1, "rollouts": 2 * 2 * 4}
    right, wrong = sols
    assert right.correct and not wrong.correct
    assert right.steps == RIGHT.split("\n\n") and wrong.steps == WRONG_FIRST.split("\n\n")
    # Clean prefixes: 3 of 4 rollouts right; after the wrong product none is; the answer step
    # is labelled by the sample's own answer.
    assert right.labels == [0.75, 0.75, 1.0]
    assert wrong.labels == [0.0, 0.0, 0.0]
    # Rollouts start after each non-final step, delimiter included, never after the answer.
    prefixes = {p for _, p in roll.calls if p}
    assert prefixes == {"3 * 4 = 12\n2 + 12\n\n", "3 * 4 = 12\n2 + 12\n\n2 + 12 = 14\n\n",
                        "3 * 4 = 13\n2 + 13\n\n", "3 * 4 = 13\n2 + 13\n\n2 + 13 = 15\n\n"}


def test_cut_steps_and_grading() -> None:
    assert cut_steps(RIGHT + "\n\nextra chatter") == RIGHT.split("\n\n")
    assert cut_steps(NO_ANSWER) is None
    assert cut_steps("The answer is \\boxed{") is None
    assert grade_text(RIGHT, "14") and not grade_text(WRONG_FIRST, "14")


def test_step_features_are_the_policy_hidden_states(tiny_llama_dir: Path) -> None:
    """The value head's training features equal what HFPolicy hands the verifier when it
    produces the same steps (hidden state at the step's last token, after the final norm)."""
    from ponder.workers.hf_policy import HFPolicy
    from ponder.workers.models import resolve
    from ponder.training.checkpoint import EOS_ID
    from ponder.training.mc_labels import LabeledSolution
    from ponder.workers.types import Node, Prompt, SamplingParams

    policy = HFPolicy(resolve(str(tiny_llama_dir)))
    sol = LabeledSolution(Q.question, Q.answer, RIGHT.split("\n\n"), [0.5, 0.5, 1.0], True)
    X, y, owner = step_features(policy.model, policy.tokenizer, policy.fmt, [sol])
    assert X.shape == (3, policy.hidden_size) and y.tolist() == [0.5, 0.5, 1.0] and owner.tolist() == [0, 0, 0]
    # Force the policy through the same steps: a scripted "sampler" that always picks the
    # next token of the known solution (greedy over a one-hot bias on the logits).
    (pre,) = policy.prefill([Prompt(Q.question)])
    node = Node(id=0, parent=None, depth=0, handle=pre.handle, token_ids=pre.token_ids)
    target = policy.encode("\n\n".join(sol.steps[:-1]) + "\n\n" + sol.steps[-1]) + [EOS_ID]
    head = policy.model.get_output_embeddings()
    pos = {"i": 0}
    orig = head.forward

    def forced(h: torch.Tensor) -> torch.Tensor:
        logits = orig(h)
        bias = torch.full_like(logits, -1e4)
        bias[..., target[min(pos["i"], len(target) - 1)]] = 0
        pos["i"] += 1
        return logits + bias

    head.forward = forced  # type: ignore[method-assign]
    hidden = []
    for depth in range(1, 4):
        (out,) = policy.expand([node], [SamplingParams(temperature=0.0)], [0])
        pos["i"] -= 1  # the policy runs the head once more after the step's last token
        node = Node(id=depth, parent=node, depth=depth, handle=out.handle, token_ids=out.token_ids, text=out.text)
        hidden.append(out.hidden)
    head.forward = orig  # type: ignore[method-assign]
    assert [n.strip("\n") for n in (node.parent.parent.text, node.parent.text, node.text)] == sol.steps  # type: ignore[union-attr]
    torch.testing.assert_close(torch.stack(hidden), X, atol=1e-4, rtol=1e-4)


def test_revision_trajectories() -> None:
    rng = random.Random(0)
    target = RIGHT
    wrong = [WRONG_FIRST, "1 + 1 = 3\n\nThe answer is \\boxed{3}.", RIGHT.replace("14}", "41}"), "x", "y", "z"]
    counts = [0] * 5
    for _ in range(200):
        (t,) = build_trajectories(Q.question, [target], wrong, rng)
        assert t.target == target and len(t.attempts) <= 4 and len(set(t.attempts)) == len(t.attempts)
        assert all(a in wrong for a in t.attempts)
        if t.attempts:
            d = [edit_distance(a, target) for a in t.attempts]
            assert d[-1] == min(d)  # the closest wrong attempt is the last one
        counts[len(t.attempts)] += 1
    assert all(c > 10 for c in counts)  # 0..4 attempts all occur
    assert build_trajectories(Q.question, [target], [], rng)[0].attempts == ()
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3


def test_bulk_sampler_matches_transformers(tiny_llama_dir: Path) -> None:
    """Greedy continuations from the lean KV-cache forward equal transformers' own greedy
    decoding, with prompts of different lengths in one batch (left padding) and GQA."""
    from transformers import AutoModelForCausalLM

    from ponder.training.sample import generate

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    prompts = [[5, 9, 40, 41], [7], [3, 3, 3, 3, 3, 3, 3, 11], [100, 101]]
    ours = generate(model, prompts, temperature=0.0, max_new=12, seed=0, batch_size=3)
    for p, got in zip(prompts, ours):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=0)
        want = ref[0, len(p) :].tolist()
        if 2 in want:
            want = want[: want.index(2) + 1]
        assert got == want
    # Sampling is reproducible under a seed.
    a = generate(model, prompts, temperature=1.0, max_new=8, seed=5)
    b = generate(model, prompts, temperature=1.0, max_new=8, seed=5)
    assert a == b
