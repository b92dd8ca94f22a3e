"""Sampling answers to task questions and grading them: the measurements shared by the training
jobs (validation at the end of a run), the slow recipe test and the quality report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.workers.models import PromptFormat, format_prompt
from ponder.tasks.arith import Question, grade
from ponder.training.checkpoint import EOS_ID
from ponder.training.sample import generate

MAX_NEW = 320  # the longest arith solution in the eval mix is ~230 characters


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode([i for i in ids if i != EOS_ID])


def prompt_ids(tokenizer: Any, fmt: PromptFormat, question: str, attempts: Sequence[str] = ()) -> list[int]:
    """The prompt exactly as a ponder Policy builds it (``format_prompt``), tokenised."""
    return encode(tokenizer, format_prompt(tokenizer, fmt, question, tuple(attempts)))


@dataclass
class Samples:
    """``texts[i][j]``: the j-th sampled solution to question i, ``correct[i][j]`` its grade."""

    questions: list[Question]
    texts: list[list[str]]
    correct: list[list[bool]]

    def pass_rates(self) -> list[float]:
        return [sum(c) / len(c) if c else 0.0 for c in self.correct]

    def mean(self) -> float:
        rates = self.pass_rates()
        return sum(rates) / len(rates) if rates else 0.0


def sample_solutions(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    qs: Sequence[Question],
    n: int,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    dtype: Any = None,
    batch_size: int = 256,
    progress: Any = None,
) -> Samples:
    """``n`` samples per question (the whole solution in one go) and their grades."""
    prompts = [prompt_ids(tokenizer, fmt, q.question) for q in qs for _ in range(n)]
    outs = generate(
        model, prompts, temperature=temperature, max_new=MAX_NEW, seed=seed, dtype=dtype or torch.float32,
        batch_size=batch_size, progress=progress,
    )
    texts = [[decode(tokenizer, outs[i * n + j]) for j in range(n)] for i in range(len(qs))]
    correct = [[grade(t, q.answer) for t in row] for q, row in zip(qs, texts)]
    return Samples(list(qs), texts, correct)


def span_logprobs(model: Any, seqs: Sequence[list[int]], spans: Sequence[Sequence[tuple[int, int]]], pad_id: int = 0,
                  batch: int = 64) -> list[list[list[float]]]:
    """Per sequence, per span ``(start, end)``, the log-prob (T = 1) under ``model`` of each token
    in ``seq[start:end]`` given everything before it: one teacher-forced forward per sequence,
    batched by length, right-padded (causal attention never sees the padding)."""
    return span_logprobs_and_gaps(model, seqs, spans, pad_id, batch)[0]


def span_logprobs_and_gaps(
    model: Any, seqs: Sequence[list[int]], spans: Sequence[Sequence[tuple[int, int]]], pad_id: int = 0, batch: int = 64,
) -> tuple[list[list[list[float]]], list[list[list[float]]]]:
    """:func:`span_logprobs`, and beside each log-prob the token's *gap*: its log-prob minus the
    highest log-prob of any token at that position (0 where the model's favourite was read)."""
    lps: list[list[list[float]]] = [[] for _ in seqs]
    gaps: list[list[list[float]]] = [[] for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch):
        rows = order[b : b + batch]
        T = max(len(seqs[i]) for i in rows)
        padded = torch.full((len(rows), T), pad_id, dtype=torch.long)
        for j, i in enumerate(rows):
            padded[j, : len(seqs[i])] = torch.tensor(seqs[i])
        lp = torch.log_softmax(model(input_ids=padded).logits.float(), -1)  # (B, T, V)
        top = lp.max(-1).values  # (B, T)
        for j, i in enumerate(rows):
            got = lp[j, : len(seqs[i]) - 1].gather(1, torch.tensor(seqs[i][1:])[:, None])[:, 0]  # log p(token t | < t)
            gap = got - top[j, : len(seqs[i]) - 1]
            lps[i] = [got[a - 1 : e - 1].tolist() for a, e in spans[i]]
            gaps[i] = [gap[a - 1 : e - 1].tolist() for a, e in spans[i]]
    return lps, gaps
