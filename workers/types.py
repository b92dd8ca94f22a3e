"""The vocabulary shared by policies, verifiers, strategies and the worker loop.

A search tree is made of :class:`Node` objects. The root holds the prompt (depth 0); every
other node is one reasoning step appended to its parent. A strategy never calls a model: it
yields :class:`Prefill`, :class:`Expand` and :class:`Score` requests, and the worker loop
batches the requests of every live question into one policy or verifier call per tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ponder.proto.config import DEFAULT_MAX_STEP_TOKENS, DEFAULT_STEP_DELIMITER, DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class SamplingParams:
    """How one step is sampled. ``temperature == 0`` means greedy."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0
    max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be >= 1, got {self.max_step_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Prompt:
    """What a root is built from: the question, and for revisions the earlier attempts."""

    question: str
    attempts: tuple[str, ...] = ()
    scores: tuple[float | None, ...] = ()  # the verifier's score of each attempt (None: unscored)


@dataclass(eq=False)
class Node:
    """One step of a partial solution; the path root→node is the solution so far."""

    id: int
    parent: Node | None
    depth: int  # 0 for the root (the prompt)
    text: str = ""  # this step's decoded text (the prompt text for the root)
    token_ids: list[int] = field(default_factory=list)  # this step's tokens
    finished: bool = False  # the solution ended here (EOS / end of answer)
    stop_reason: str = ""  # delimiter | eos | max_tokens | max_steps
    score: float | None = None  # verifier's score of this step
    aggregate: float | None = None  # aggregated score over root..this step
    n_scored: int = 0  # how many steps of the path have been scored
    hidden: torch.Tensor | None = None  # (D,) last hidden state at this step's end
    # log-probability of each of this step's tokens under the policy (temperature 1), as computed
    # while sampling it: the confidence verifier's input (no extra forward pass)
    logprobs: list[float] = field(default_factory=list)
    handle: Any = None  # policy-owned state (KV cache blocks)
    verifier_state: Any = None  # verifier-owned state (a separate PRM's cache)
    prompt: Prompt | None = None  # set on roots
    n_children: int = 0  # expansions requested from this node so far
    released: bool = False

    @property
    def parent_id(self) -> int:
        return -1 if self.parent is None or self.parent.depth == 0 else self.parent.id

    @property
    def root(self) -> Node:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def path(self) -> list[Node]:
        """Steps from the first step to this one (the root excluded)."""
        out: list[Node] = []
        node: Node | None = self
        while node is not None and node.depth > 0:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def solution_text(self, delimiter: str = DEFAULT_STEP_DELIMITER) -> str:
        return delimiter.join(step.text.strip("\n") for step in self.path())

    def prefix_tokens(self) -> int:
        """Tokens from the root's prompt through this node."""
        total = 0
        node: Node | None = self
        while node is not None:
            total += len(node.token_ids)
            node = node.parent
        return total


# ---------------------------------------------------------------------------------------------
# Requests a strategy yields, and what the loop sends back.


@dataclass
class Prefill:
    """Build one root per prompt. Reply: ``list[Node]`` (the roots, in order)."""

    prompts: list[Prompt]


@dataclass
class Expand:
    """Sample one new step under each listed parent (a parent may be listed several times,
    giving several children). Reply: ``list[Node]`` children, in order."""

    parents: list[Node]
    sampling: SamplingParams


@dataclass
class Score:
    """Score the newest step of each node with the verifier and update its aggregate.
    Reply: ``list[float]`` step scores (also written to ``node.score``/``node.aggregate``)."""

    nodes: list[Node]


@dataclass
class Prune:
    """Keep the ``keep[i]`` best nodes of each segment ``groups[i]`` by aggregate score (ties
    to the earlier node). Reply: ``list[list[Node]]``, each segment's kept nodes best first.
    The loop answers the Prune requests of every question in one segmented ``topk_prune``
    launch, without a model call, and advances those questions again in the same tick."""

    groups: list[list[Node]]
    keep: list[int]


Request = Prefill | Expand | Score | Prune


# ---------------------------------------------------------------------------------------------
# What policies and verifiers return to the loop.


@dataclass
class PrefillOutput:
    handle: Any
    token_ids: list[int]  # the prompt's tokens
    computed_tokens: int  # tokens actually run through the model
    reused_tokens: int  # prompt tokens served from a prefix cache


@dataclass
class StepOutput:
    text: str
    token_ids: list[int]
    finished: bool
    stop_reason: str
    handle: Any
    hidden: torch.Tensor | None = None  # (D,)
    logprobs: list[float] = field(default_factory=list)  # per token, log p under the policy at T=1
    computed_tokens: int = 0  # tokens run through the model for this step (decode + any re-encode)


@dataclass
class ScoreOutput:
    scores: list[float]
    aggregates: list[float]
    prm_tokens: int = 0  # tokens a separate PRM processed for this call
    flops: float = 0.0  # verifier FLOPs of this call


@dataclass
class Usage:
    """The paper's accounting for one answer (see DESIGN.md, Budgets and FLOPs)."""

    generations: int = 0
    prompt_tokens: int = 0
    decode_tokens: int = 0
    prm_tokens: int = 0
    flops: float = 0.0
    flops_unshared: float = 0.0
    tokens_saved: int = 0
    steps: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.decode_tokens + self.prm_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "generations": self.generations,
            "prompt_tokens": self.prompt_tokens,
            "decode_tokens": self.decode_tokens,
            "prm_tokens": self.prm_tokens,
            "flops": self.flops,
            "flops_unshared": self.flops_unshared,
            "tokens_saved": self.tokens_saved,
            "steps": self.steps,
        }


@dataclass
class AnswerVote:
    answer: str
    count: int
    score: float


@dataclass
class Outcome:
    """What a strategy returns when it is done."""

    answer: str
    solution: str
    votes: list[AnswerVote] = field(default_factory=list)
    stop_reason: str = ""
