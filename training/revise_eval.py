"""Revision chains on task questions, batched: the reviser's pass@1 at each attempt when every
attempt sees the chain's earlier ones in context, exactly as the revision strategy (and the
quality report's ``revise_section``) passes them. ``train revise`` runs short chains on
validation questions for early stopping; the report runs long ones on test questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.workers.models import PromptFormat
from ponder.tasks import arith
from ponder.training.grading import MAX_NEW, decode, prompt_ids
from ponder.training.mc_labels import cut_steps
from ponder.training.sample import generate


@dataclass
class ChainResult:
    """``correct[i][k]``: whether attempt k+1 of chain i is right; ``attempts[i][k]``: what the
    revision strategy passes on of it (its steps up to the answer, or its text if it has none)."""

    correct: list[list[bool]]
    attempts: list[list[str]] = field(default_factory=list)

    def pass_at_1_by_step(self) -> list[float]:
        n = len(self.correct)
        steps = len(self.correct[0]) if self.correct else 0
        return [sum(c[k] for c in self.correct) / n for k in range(steps)]


def revision_chains(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    qs: Sequence[arith.Question],
    chains: int,
    steps: int,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,  # bf16 is emulated (slow) on CPUs without avx512_bf16
    batch_size: int = 128,
    progress: Any = None,
) -> ChainResult:
    """``chains`` chains of ``steps`` attempts per question (chain i is question ``i // chains``);
    attempt k's prompt holds the chain's earlier attempts (``format_prompt`` keeps the newest
    ``max_attempts_in_context``). ``progress`` (a tqdm bar) advances by a row per attempt."""
    rows = [q for q in qs for _ in range(chains)]
    attempts: list[list[str]] = [[] for _ in rows]
    correct: list[list[bool]] = [[] for _ in rows]
    for k in range(steps):
        prompts = [prompt_ids(tokenizer, fmt, q.question, attempts[i]) for i, q in enumerate(rows)]
        outs = generate(
            model, prompts, temperature=temperature, max_new=MAX_NEW, seed=seed + 100 + k, batch_size=batch_size,
            dtype=dtype,
        )
        for i, (q, o) in enumerate(zip(rows, outs)):
            text = decode(tokenizer, o)
            cut = cut_steps(text)
            correct[i].append(cut is not None and arith.grade(arith.STEP_DELIMITER.join(cut), q.answer))
            # What the revision strategy passes on: the attempt's steps up to its answer.
            attempts[i].append(arith.STEP_DELIMITER.join(cut) if cut else text.strip())
        if progress is not None:
            progress.update(len(rows))
    return ChainResult(correct, attempts)


def held_out_score(by_step: Sequence[float]) -> float:
    """The early-stopping score: mean pass@1 over the attempts (1–4 in ``train revise``). It
    rewards a good first attempt (the plain policy's skill) and revisions that climb above it
    alike; a reviser that loses attempt 1 or falls with more attempts in context scores lower."""
    return sum(by_step) / len(by_step) if by_step else 0.0


TIE = 1e-9  # scores are means of pass rates; sums in another order differ by float rounding


@dataclass
class EarlyStopping:
    """Keeps the best-scoring evaluation and says when ``patience`` evaluations in a row have
    scored below it. A tie goes to the later evaluation (it has seen more data at a lower
    learning rate); ``min_delta`` > 0 asks for a real gain instead."""

    patience: int
    min_delta: float = 0.0
    best_score: float = float("-inf")
    best_step: int = -1
    since_best: int = 0

    def update(self, step: int, score: float) -> tuple[bool, bool]:
        """Record an evaluation; returns (is the new best, stop now)."""
        if score >= self.best_score + self.min_delta - TIE:
            self.best_score, self.best_step, self.since_best = score, step, 0
            return True, False
        self.since_best += 1
        return False, self.since_best >= self.patience


