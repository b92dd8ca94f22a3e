"""The engine as a :class:`~ponder.workers.policy.Policy`: roots are prefilled sequences (prompt
blocks reused from the prefix index when cached), children are forks of their parent that
decode one step; a node's handle is its :class:`~ponder.workers.engine.kv_cache.Sequence`."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ponder.workers.engine.config import EngineConfig
from ponder.workers.engine.decode import StepRow, StopRule, run_steps
from ponder.workers.engine.engine import Engine
from ponder.workers.engine.kv_cache import CacheStats, Sequence
from ponder.workers.models import ModelFiles, auto_dtype, format_prompt, longest_token_chars, load_hf_model, load_tokenizer, non_embedding_params, resolve
from ponder.workers.policy import Policy
from ponder.workers.sampling import RowRandom, StepStopper, eos_ids
from ponder.workers.types import Node, PrefillOutput, Prompt, SamplingParams, StepOutput


class EnginePolicy(Policy):
    """Paged-KV policy for Llama-family models (Llama, Qwen2, Mistral)."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        model: Any = None,
        tokenizer: Any = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.files = files
        self.fmt = files.fmt
        self.name = files.name
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(files)
        hf = model if model is not None else load_hf_model(files)
        self.n_params = non_embedding_params(hf)
        self.hidden_size = int(hf.config.hidden_size)
        self.step_delimiter = self.fmt.step_delimiter
        self.eos = eos_ids(self.tokenizer, getattr(hf, "generation_config", None))
        self.engine = Engine(hf, self.config)
        self.stopper = StepStopper(self.tokenizer, self.step_delimiter)
        # When the caller loaded the model, it may still want it; otherwise the unfused
        # originals can be freed (the engine keeps fused copies).
        self.hf_model = model

    @classmethod
    def load(
        cls,
        model_name: str,
        *,
        block_size: int = 16,
        max_kv_bytes: int = EngineConfig.max_kv_bytes,
        dtype: torch.dtype | str = torch.float32,
        **config: Any,
    ) -> EnginePolicy:
        """Resolve ``model_name`` (see :func:`ponder.workers.models.resolve`) and load it.
        ``dtype="auto"``: :func:`ponder.workers.models.auto_dtype`."""
        if isinstance(dtype, str) and dtype.strip().lower() == "auto":
            dtype = auto_dtype(str(config.get("device", EngineConfig.device)))
        cfg = EngineConfig(block_size=block_size, max_kv_bytes=max_kv_bytes, dtype=dtype, **config)  # type: ignore[arg-type]  # a name is parsed in __post_init__
        files = resolve(model_name)
        return cls(files, model=None, config=cfg)

    # -- Policy -----------------------------------------------------------------------------

    def format_prompt(self, prompt: Prompt) -> str:
        return format_prompt(self.tokenizer, self.fmt, prompt.question, prompt.attempts, prompt.scores)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def device(self) -> str:
        return str(self.engine.device)

    @property
    def dtype(self) -> str:
        return str(self.config.dtype).removeprefix("torch.")

    @property
    def context_tokens(self) -> int:
        return self.engine.context_limit

    @functools.cached_property
    def max_token_chars(self) -> int:
        return longest_token_chars(self.tokenizer)

    def prefill(self, prompts: list[Prompt]) -> list[PrefillOutput]:
        outs: list[PrefillOutput] = []
        try:
            # One prompt at a time: a prompt repeated in the batch reuses the first one's blocks.
            for prompt in prompts:
                ids = self.encode(self.format_prompt(prompt))
                done = self.engine.prefill(ids)
                outs.append(PrefillOutput(done.seq, ids, done.computed_tokens, done.reused_tokens))
        except BaseException:
            for out in outs:
                self.engine.release(out.handle)
            raise
        return outs

    def expand(
        self, parents: list[Node], sampling: list[SamplingParams], seeds: list[int]
    ) -> list[StepOutput]:
        if not (len(parents) == len(sampling) == len(seeds)):
            raise ValueError("expand: parents, sampling and seeds must have the same length")
        rows: list[StepRow] = []
        try:
            for parent, params, seed in zip(parents, sampling, seeds):
                handle = parent.handle
                if not isinstance(handle, Sequence) or handle.released:
                    raise ValueError(f"node {parent.id} has no live engine sequence (released or foreign)")
                rows.append(StepRow(self.engine.fork(handle), params, RowRandom(seed)))
            run_steps(self.engine, rows, StopRule(self.eos, self.stopper))
        except BaseException:
            for row in rows:
                self.engine.release(row.seq)
            raise
        return [self._output(row) for row in rows]

    def _output(self, row: StepRow) -> StepOutput:
        text_ids = [t for t in row.tokens if t not in self.eos]
        return StepOutput(
            text=self.tokenizer.decode(text_ids),
            token_ids=list(row.tokens),
            finished=row.reason == "eos" or row.at_limit,
            stop_reason=row.reason,
            handle=row.seq,
            hidden=None if row.hidden is None else row.hidden.float(),  # verifiers read fp32
            logprobs=list(row.logprobs),
            computed_tokens=len(row.tokens),  # each sampled token ran through the model once
        )

    def release(self, nodes: list[Node]) -> None:
        for node in nodes:
            if isinstance(node.handle, Sequence):
                self.engine.release(node.handle)

    # -- introspection ----------------------------------------------------------------------

    def cache_stats(self) -> CacheStats:
        return self.engine.stats()
