"""Scripted policy and verifier for property tests of the search strategies.

Both are deterministic functions of what they are given (the row seed, the path so far), so a
property — beams pruned to width, budget respected, same seed same result — shows plainly,
without asserting on a model's transcript. Both record every call for the tests to inspect.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ponder.workers.policy import Policy
from ponder.workers.types import Node, PrefillOutput, Prompt, SamplingParams, ScoreOutput, StepOutput
from ponder.workers.verifier import Verifier, aggregate


def stable_hash(*parts: object) -> int:
    """A hash that does not change between runs (unlike ``hash`` on strings)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class StepScript:
    """What a scripted step looks like: ``steps`` steps per solution, the last stating one of
    ``answers`` (drawn by the row's seed; greedy rows take a hash of the path instead)."""

    steps: int = 3
    answers: tuple[str, ...] = ("7", "9", "11")
    weights: tuple[float, ...] | None = None
    tokens_per_step: int = 5
    finish_with_eos: bool = True


class ScriptedPolicy(Policy):
    """A policy whose steps are drawn from a :class:`StepScript` with each row's seed.

    ``step_fn(parent, rng, greedy)`` may replace the script entirely; it returns
    ``(text, finished)``. Every token of a step gets the log-prob ``logprob_fn(text)`` (default:
    a stable hash of the text in (-1, 0]), what the confidence verifier reads.
    """

    def __init__(
        self,
        script: StepScript | None = None,
        step_fn: Callable[[Node, random.Random, bool], tuple[str, bool]] | None = None,
        hidden_size: int = 8,
        logprob_fn: Callable[[str], float] | None = None,
    ) -> None:
        self.logprob_fn = logprob_fn or (lambda text: -(stable_hash(text) % 100) / 100)
        self.name = "scripted"
        self.n_params = 1000
        self.hidden_size = hidden_size
        self.step_delimiter = "\n\n"
        self.script = script or StepScript()
        self.step_fn = step_fn
        self.prefill_calls: list[list[Prompt]] = []
        self.expand_calls: list[list[Node]] = []
        self.expand_sampling: list[list[SamplingParams]] = []
        self.released: list[int] = []

    def format_prompt(self, prompt: Prompt) -> str:
        kept = prompt.attempts[-4:]
        return "".join(f"Attempt: {a}\n\n" for a in kept) + prompt.question

    def prefill(self, prompts: list[Prompt]) -> list[PrefillOutput]:
        self.prefill_calls.append(list(prompts))
        outs = []
        for p in prompts:
            ids = [3] * (len(self.format_prompt(p)) // 4 + 1)
            outs.append(PrefillOutput(handle=("root", len(ids)), token_ids=ids, computed_tokens=len(ids), reused_tokens=0))
        return outs

    def _step(self, parent: Node, rng: random.Random, greedy: bool) -> tuple[str, bool]:
        if self.step_fn is not None:
            return self.step_fn(parent, rng, greedy)
        s = self.script
        depth = parent.depth + 1
        if depth >= s.steps:
            if greedy:
                answer = s.answers[stable_hash(_path_key(parent)) % len(s.answers)]
            else:
                answer = rng.choices(s.answers, weights=s.weights)[0]
            return f"So the answer is \\boxed{{{answer}}}.", s.finish_with_eos
        tag = stable_hash(_path_key(parent)) % 1000 if greedy else rng.randrange(1000)
        return f"Step {depth}: note {tag}.", False

    def expand(self, parents: list[Node], sampling: list[SamplingParams], seeds: list[int]) -> list[StepOutput]:
        self.expand_calls.append(list(parents))
        self.expand_sampling.append(list(sampling))
        outs = []
        for parent, params, seed in zip(parents, sampling, seeds):
            rng = random.Random(seed)
            text, finished = self._step(parent, rng, params.greedy)
            n_tok = self.script.tokens_per_step
            hidden = torch.tensor([random.Random(stable_hash(text, seed)).uniform(-1, 1) for _ in range(self.hidden_size)])
            outs.append(
                StepOutput(
                    text=text + ("" if finished else "\n\n"),
                    token_ids=[4] * n_tok,
                    finished=finished,
                    stop_reason="eos" if finished else "delimiter",
                    handle=("step", n_tok),
                    hidden=hidden,
                    logprobs=[self.logprob_fn(text)] * n_tok,
                    computed_tokens=n_tok,
                )
            )
        return outs

    def release(self, nodes: list[Node]) -> None:
        self.released.extend(n.id for n in nodes)


def _path_key(node: Node) -> tuple[str, ...]:
    out: list[str] = []
    n: Node | None = node
    while n is not None:
        out.append(n.text)
        n = n.parent
    return tuple(out)


@dataclass
class ScriptedVerifier(Verifier):
    """Scores a step by ``score_fn(node)``; default: a stable hash of the path in (0.05, 0.95),
    with steps that state an answer listed in ``answer_scores`` scored by that table."""

    answer_scores: dict[str, float] = field(default_factory=dict)
    score_fn: Callable[[Node], float] | None = None
    calls: list[list[Node]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    name: str = "scripted-prm"
    n_params: int = 100

    def _score(self, node: Node) -> float:
        if self.score_fn is not None:
            return self.score_fn(node)
        for answer, value in self.answer_scores.items():
            if f"\\boxed{{{answer}}}" in node.text:
                return value
        return 0.05 + 0.9 * (stable_hash(_path_key(node)) % 10_000) / 10_000

    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        self.calls.append(list(nodes))
        self.modes.append(aggregation)
        scores = [self._score(n) for n in nodes]
        aggs = [aggregate(n.aggregate, n.n_scored, s, aggregation) for n, s in zip(nodes, scores)]
        return ScoreOutput(scores=scores, aggregates=aggs, prm_tokens=0, flops=2.0 * self.n_params * len(nodes))

    def release(self, nodes: list[Node]) -> None:
        self.released.extend(n.id for n in nodes)
