"""Monte Carlo process labels (the paper's PRM data, after Math-Shepherd): sample solutions per
question, roll out from every step prefix, and label each step with the fraction of rollouts
that reach the right answer.

The labeller only sees text through a :class:`Rollouts` callable (question, solution prefix →
continuation), so it runs the same on a real model (:class:`ModelRollouts`) and on a scripted
policy in the tests. Steps are cut the way the search loop cuts them: at the step delimiter, and
a solution ends at the first step that states ``\\boxed{…}`` (``is_complete``); samples that
never state a parsable answer are dropped, as the paper does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.workers.answers import extract_answer, is_correct
from ponder.workers.models import PromptFormat, format_prompt
from ponder.tasks.arith import STEP_DELIMITER, Question
from ponder.training.checkpoint import EOS_ID
from ponder.training.sample import generate, step_end_hidden


class Rollouts(Protocol):
    def __call__(self, questions: Sequence[str], prefixes: Sequence[str], seed: int) -> list[str]:
        """One sampled continuation (to the end of the solution) per (question, prefix)."""
        ...


@dataclass
class LabeledSolution:
    question: str
    gold: str
    steps: list[str]  # step texts without delimiters; the last one states the answer
    labels: list[float]  # per step: fraction of rollouts from after this step that are right
    correct: bool  # the sample's own answer is right (the last step's label)

    def text(self, delimiter: str = STEP_DELIMITER) -> str:
        return delimiter.join(self.steps)


def cut_steps(text: str, delimiter: str = STEP_DELIMITER) -> list[str] | None:
    """The steps of a solution up to the first one that states ``\\boxed``; None when no step
    does or its answer does not parse."""
    steps: list[str] = []
    for raw in text.split(delimiter):
        step = raw.strip("\n")
        if not step:
            continue
        steps.append(step)
        if "\\boxed" in step:
            answer = extract_answer(step)
            # An unbalanced \boxed{ falls through to the "answer is" rule: not an answer.
            return steps if answer is not None and "\\boxed" not in answer else None
    return None


def grade_text(text: str, gold: str, delimiter: str = STEP_DELIMITER) -> bool:
    steps = cut_steps(text, delimiter)
    return steps is not None and is_correct(extract_answer(steps[-1]), gold)


def mc_label(
    questions: Sequence[Question],
    rollouts: Rollouts,
    *,
    samples: int,
    rollouts_per_step: int,
    seed: int,
    delimiter: str = STEP_DELIMITER,
    log: Callable[[str], None] | None = None,
) -> tuple[list[LabeledSolution], dict[str, int]]:
    """Label ``samples`` solutions per question; returns them and counts (sampled, dropped,
    rollouts run)."""
    qs = [q for q in questions for _ in range(samples)]
    texts = rollouts([q.question for q in qs], [""] * len(qs), seed)
    kept: list[tuple[Question, list[str]]] = []
    for q, text in zip(qs, texts):
        steps = cut_steps(text, delimiter)
        if steps is not None:
            kept.append((q, steps))
    if log:
        log(f"{len(kept)}/{len(qs)} samples state a parsable answer")
    # One rollout request per (sample, non-final step, rollout); the final step needs none.
    req_q: list[str] = []
    req_prefix: list[str] = []
    owner: list[tuple[int, int]] = []
    for si, (q, steps) in enumerate(kept):
        for i in range(len(steps) - 1):
            prefix = delimiter.join(steps[: i + 1]) + delimiter
            for _ in range(rollouts_per_step):
                req_q.append(q.question)
                req_prefix.append(prefix)
                owner.append((si, i))
    conts = rollouts(req_q, req_prefix, seed + 1) if req_q else []
    hits: dict[tuple[int, int], list[bool]] = {}
    golds = {q.question: q.answer for q, _ in kept}
    for (si, i), qtext, prefix, cont in zip(owner, req_q, req_prefix, conts):
        hits.setdefault((si, i), []).append(grade_text(prefix + cont, golds[qtext], delimiter))
    out: list[LabeledSolution] = []
    for si, (q, steps) in enumerate(kept):
        correct = is_correct(extract_answer(steps[-1]), q.answer)
        labels = [sum(hits[(si, i)]) / len(hits[(si, i)]) for i in range(len(steps) - 1)]
        out.append(LabeledSolution(q.question, q.answer, steps, labels + [float(correct)], correct))
    counts = {"sampled": len(qs), "kept": len(kept), "dropped": len(qs) - len(kept), "rollouts": len(req_q)}
    return out, counts


class ModelRollouts:
    """:class:`Rollouts` backed by an HF causal LM sampled with :func:`generate`."""

    def __init__(
        self, model: Any, tokenizer: Any, fmt: PromptFormat, *, temperature: float = DEFAULT_TEMPERATURE,
        max_new: int = 320, dtype: torch.dtype = torch.float32, batch_size: int = 256, progress: Any = None,
    ) -> None:
        self.model, self.tokenizer, self.fmt = model, tokenizer, fmt
        self.temperature, self.max_new, self.dtype = temperature, max_new, dtype
        self.batch_size, self.progress = batch_size, progress

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, questions: Sequence[str], prefixes: Sequence[str], seed: int) -> list[str]:
        prompts = [
            self._encode(format_prompt(self.tokenizer, self.fmt, q) + p) for q, p in zip(questions, prefixes)
        ]
        if self.progress is not None:
            self.progress.reset(total=len(prompts))
        outs = generate(
            self.model, prompts, temperature=self.temperature, max_new=self.max_new, seed=seed,
            batch_size=self.batch_size, dtype=self.dtype, progress=self.progress,
        )
        return [self.tokenizer.decode([t for t in o if t != EOS_ID]) for o in outs]


def step_features(
    model: Any, tokenizer: Any, fmt: PromptFormat, sols: Sequence[LabeledSolution], delimiter: str = STEP_DELIMITER
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden (N, D), soft labels (N,), solution index (N,)) over every labeled step.

    The hidden state of a step is taken at its last token — the delimiter's last character,
    or EOS after the answer step — from a teacher-forced forward over the canonical token
    sequence ``prompt, step, delimiter, …, answer step, EOS``: what a policy returns as
    ``StepOutput.hidden`` when it samples that solution."""
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    seqs: list[list[int]] = []
    ends: list[list[int]] = []
    for s in sols:
        ids = enc(format_prompt(tokenizer, fmt, s.question))
        e: list[int] = []
        for i, step in enumerate(s.steps):
            last = i == len(s.steps) - 1
            ids += enc(step) + ([EOS_ID] if last else enc(delimiter))
            e.append(len(ids) - 1)
        seqs.append(ids)
        ends.append(e)
    hidden = step_end_hidden(model, seqs, ends)
    X = torch.cat(hidden) if hidden else torch.empty(0)
    y = torch.tensor([lab for s in sols for lab in s.labels], dtype=torch.float32)
    owner = torch.tensor([k for k, s in enumerate(sols) for _ in s.labels], dtype=torch.long)
    return X, y, owner


def save_labels(path: Path, sols: Sequence[LabeledSolution], split: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for s in sols:
            f.write(json.dumps({"split": split, **asdict(s)}) + "\n")


def load_labels(path: Path) -> dict[str, list[LabeledSolution]]:
    out: dict[str, list[LabeledSolution]] = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        split = d.pop("split")
        out.setdefault(split, []).append(LabeledSolution(**d))
    return out
