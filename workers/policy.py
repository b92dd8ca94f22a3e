"""The policy interface: a model that builds roots from prompts and extends partial solutions
one reasoning step at a time, for many sequences of many questions in one call."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ponder.workers.types import Node, PrefillOutput, Prompt, SamplingParams, StepOutput


class Policy(ABC):
    """A proposer LLM.

    ``n_params`` is the non-embedding parameter count (FLOPs ≈ 2·P per processed token).
    ``hidden_size`` is D of the step-end hidden states handed to a value-head verifier.
    Implementations: :class:`ponder.workers.hf_policy.HFPolicy` (plain transformers) and the
    engine's paged-KV policy.
    """

    name: str
    n_params: int
    hidden_size: int
    step_delimiter: str

    @abstractmethod
    def prefill(self, prompts: list[Prompt]) -> list[PrefillOutput]:
        """Tokenise and run each prompt once; the returned handles become roots."""

    @abstractmethod
    def expand(
        self, parents: list[Node], sampling: list[SamplingParams], seeds: list[int]
    ) -> list[StepOutput]:
        """Append one step to each parent. ``seeds[i]`` makes row i reproducible on its own,
        whatever else is in the batch."""

    def release(self, nodes: list[Node]) -> None:
        """Free what the policy holds for these nodes (KV blocks). Default: nothing."""

    def format_prompt(self, prompt: Prompt) -> str:
        """The text the model sees for a prompt (chat template, earlier attempts)."""
        raise NotImplementedError

    @property
    def device(self) -> str:
        """Where the model computes ("cpu", "cuda:0", …)."""
        return "cpu"

    @property
    def dtype(self) -> str:
        """The model's compute dtype, by name ("float32", "bfloat16", …)."""
        return "float32"

    @property
    def context_tokens(self) -> int:
        """The most tokens a sequence may hold (0: unknown)."""
        return 0

    @property
    def max_token_chars(self) -> int:
        """The most characters one token of the vocabulary spells (0: unknown)."""
        return 0

    def prompt_tokens(self, prompt: Prompt) -> int | None:
        """How many tokens the prompt takes (None: this policy cannot tell without running)."""
        encode = getattr(self, "encode", None)
        return len(encode(self.format_prompt(prompt))) if encode is not None else None
