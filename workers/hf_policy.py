"""Plain-transformers policy backend: any causal LM transformers can load, no prefix sharing.

Every expansion re-encodes the whole prefix (prompt and earlier steps) with transformers' own
forward and cache, then samples step tokens for the batch. It is the reference point the
engine is measured against and the fallback for architectures the engine does not cover.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ponder.workers.models import ModelFiles, format_prompt, longest_token_chars, load_hf_model, load_tokenizer, non_embedding_params
from ponder.workers.policy import Policy
from ponder.workers.sampling import RowRandom, StepStopper, eos_ids, sample_next, token_logprobs
from ponder.workers.types import Node, PrefillOutput, Prompt, SamplingParams, StepOutput


class HFPolicy(Policy):
    def __init__(
        self, files: ModelFiles, *, model: Any = None, tokenizer: Any = None,
        device: str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> None:
        self.files = files
        self.fmt = files.fmt
        self.name = files.name
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(files)
        self.model = model if model is not None else load_hf_model(files, dtype=dtype)
        self.model.to(device=device)
        self._device = torch.device(device)
        self.n_params = non_embedding_params(self.model)
        self.hidden_size = int(self.model.config.hidden_size)
        self.step_delimiter = self.fmt.step_delimiter
        self.eos = eos_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos), 0))
        self.stopper = StepStopper(self.tokenizer, self.step_delimiter)

    def format_prompt(self, prompt: Prompt) -> str:
        return format_prompt(self.tokenizer, self.fmt, prompt.question, prompt.attempts, prompt.scores)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def context_tokens(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    @functools.cached_property
    def max_token_chars(self) -> int:
        return longest_token_chars(self.tokenizer)

    def prefill(self, prompts: list[Prompt]) -> list[PrefillOutput]:
        # Nothing is computed here: every expansion re-encodes its whole prefix.
        outs = []
        for prompt in prompts:
            ids = self.encode(self.format_prompt(prompt))
            outs.append(PrefillOutput(handle=ids, token_ids=ids, computed_tokens=0, reused_tokens=0))
        return outs

    @torch.inference_mode()
    def expand(
        self, parents: list[Node], sampling: list[SamplingParams], seeds: list[int]
    ) -> list[StepOutput]:
        if not parents:
            return []
        prefixes: list[list[int]] = [list(p.handle) for p in parents]
        B = len(prefixes)
        width = max(len(p) for p in prefixes)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for i, p in enumerate(prefixes):  # left padding: every row's last token is at the end
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self._device  # built on the CPU, run where the model is
        ids, mask, positions = ids.to(dev), mask.to(dev), positions.to(dev)
        out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]  # (B, D)
        rngs = [RowRandom(s) for s in seeds]
        steps: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        reason = [""] * B
        step_hidden: list[torch.Tensor | None] = [None] * B
        max_new = max(p.max_step_tokens for p in sampling)
        next_pos = positions[:, -1] + 1
        for _ in range(max_new + 1):
            logits = head(hidden)  # (B, V)
            live = [i for i in range(B) if not reason[i]]
            if not live:
                break
            toks = sample_next(logits[live], [sampling[i] for i in live], [rngs[i].next() for i in live])
            lps = token_logprobs(logits[live], toks)
            feed = torch.full((B,), self.pad_id, dtype=torch.long)  # filled on the CPU, then moved
            for j, i in enumerate(live):
                t = int(toks[j])
                steps[i].append(t)
                logprobs[i].append(lps[j])
                feed[i] = t
                if t in self.eos:
                    reason[i] = "eos"
                elif self.stopper.ended(steps[i]):
                    reason[i] = "delimiter"
                elif len(steps[i]) >= sampling[i].max_step_tokens:
                    reason[i] = "max_tokens"
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long, device=dev)], dim=1)
            out = decoder(
                input_ids=feed.unsqueeze(1).to(dev), attention_mask=mask, position_ids=next_pos.unsqueeze(1),
                past_key_values=cache, use_cache=True,
            )
            next_pos = next_pos + 1
            hidden = out.last_hidden_state[:, -1]
            for i in live:  # the hidden state at each row's newest token; kept at its step end
                if reason[i]:
                    step_hidden[i] = hidden[i].clone()
        results = []
        for i in range(B):
            step = steps[i]
            text_toks = [t for t in step if t not in self.eos]
            results.append(
                StepOutput(
                    text=self.tokenizer.decode(text_toks),
                    token_ids=step,
                    finished=reason[i] == "eos",
                    stop_reason=reason[i],
                    handle=prefixes[i] + step,
                    hidden=step_hidden[i],
                    logprobs=logprobs[i],
                    computed_tokens=len(prefixes[i]) + len(step),
                )
            )
        return results
