"""Step-wise decoding of many sequences in one batch, with continuous batching.

Each row is a sequence (already forked from its parent) whose ``hidden`` is the final-normed
hidden state at its last token: the next token's logits are one LM-head product away, so a
child starts sampling without running anything. Per iteration, every active row samples a
token (its own seeded stream, so its text does not depend on its batch mates), then all of
them run through the model in one decode step, which writes their keys/values and gives the
hidden states for the next iteration. A row that ended (step delimiter on the decoded text,
EOS, its token cap, the model's context limit) still runs its last token, so the returned
sequence covers the whole step and its ``hidden`` is the step's last token's, then leaves the
batch; a waiting row takes its place (at most ``max_batch_rows`` rows run together).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from ponder.workers.engine.engine import Engine
from ponder.workers.engine.kv_cache import Sequence
from ponder.workers.sampling import RowRandom, StepStopper, sample_next, token_logprobs
from ponder.workers.types import SamplingParams


@dataclass
class StepRow:
    seq: Sequence
    params: SamplingParams
    rng: RowRandom
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # log p of each token (T=1)
    reason: str = ""  # delimiter | eos | max_tokens ('' while running)
    at_limit: bool = False  # stopped by the model's context limit: cannot be extended
    hidden: torch.Tensor | None = None  # (D,) at the step's last token


@dataclass
class StopRule:
    eos: set[int]
    stopper: StepStopper | None  # None: no delimiter (plain sampling)
    suppress_eos: bool = False  # mask EOS out of the logits (fixed-length sampling benchmarks)


def _verdict(row: StepRow, token: int, rule: StopRule, limit: int) -> str:
    if token in rule.eos and not rule.suppress_eos:
        return "eos"
    if rule.stopper is not None and rule.stopper.ended(row.tokens):
        return "delimiter"
    if len(row.tokens) >= row.params.max_step_tokens:
        return "max_tokens"
    if row.seq.length + 1 >= limit:  # this token fills the context
        row.at_limit = True
        return "max_tokens"
    return ""


def run_steps(engine: Engine, rows: list[StepRow], rule: StopRule) -> None:
    """Decode one step for every row, in place (``row.tokens``, ``reason``, ``hidden``,
    ``seq``). Raises KVCacheExhausted when blocks run out; the caller releases the rows'
    sequences (nothing else is left changed)."""
    limit = engine.context_limit
    cap = engine.config.max_batch_rows
    eos_list = sorted(rule.eos)
    waiting: deque[StepRow] = deque()
    for row in rows:
        assert row.seq.hidden is not None, "a sequence to extend must end with a computed token"
        if row.seq.length >= limit:
            row.reason, row.at_limit, row.hidden = "max_tokens", True, row.seq.hidden
        else:
            waiting.append(row)
    active: list[StepRow] = []
    hidden: torch.Tensor | None = None  # (len(active), D), row-aligned with ``active``
    while active or waiting:
        if waiting and len(active) < cap:
            joining = [waiting.popleft() for _ in range(min(cap - len(active), len(waiting)))]
            fresh = torch.stack([r.seq.hidden for r in joining])  # type: ignore[misc]
            hidden = fresh if hidden is None else torch.cat([hidden, fresh])
            active.extend(joining)
        assert hidden is not None and hidden.shape[0] == len(active)
        logits = engine.model.logits(hidden)  # (B, V) float32
        if rule.suppress_eos and eos_list:
            logits[:, eos_list] = float("-inf")
        toks = sample_next(logits, [r.params for r in active], [r.rng.next() for r in active])
        for row, t, lp in zip(active, toks.tolist(), token_logprobs(logits, toks)):
            row.tokens.append(t)
            row.logprobs.append(lp)
            row.reason = _verdict(row, t, rule, limit)
        out = engine.decode_step([r.seq for r in active], toks.to(engine.device))  # (B, D)
        keep = []
        for i, row in enumerate(active):
            if row.reason:
                row.hidden = out[i].clone()
                row.seq.hidden = row.hidden
            else:
                keep.append(i)
        if len(keep) == len(active):
            hidden = out
        else:
            active = [active[i] for i in keep]
            hidden = out[torch.tensor(keep, dtype=torch.long, device=out.device)] if keep else None
