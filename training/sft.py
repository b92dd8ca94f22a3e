"""Supervised fine-tuning shared by ``train policy`` and ``train revise``: prompt/target pairs
become length-bucketed, right-padded batches with the loss on the target tokens only, and one
AdamW loop with warm-up, cosine decay and a tqdm bar.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ponder.training.checkpoint import EOS_ID, PAD_ID

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: list[int]  # model input the loss ignores
    target: list[int]  # tokens the loss is on (ends with EOS)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.target)


def encode_example(tokenizer: Any, prompt_text: str, target_text: str) -> Example:
    """Token ids exactly as ponder's policies see them: no BOS, the prompt text as
    :func:`ponder.workers.models.format_prompt` makes it, then the target and EOS."""
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return Example(enc(prompt_text), enc(target_text) + [EOS_ID])


def collate(batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), each (B, T), right-padded."""
    T = max(e.length for e in batch)
    B = len(batch)
    ids = torch.full((B, T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for i, e in enumerate(batch):
        seq = e.prompt + e.target
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(e.prompt) : len(seq)] = torch.tensor(e.target)
    return ids, mask, labels


def bucketed(examples: Iterator[Example], batch: int, pool: int = 16, seed: int = 0) -> Iterator[list[Example]]:
    """Batches of similar length: ``pool`` batches' worth are drawn, sorted by length, cut into
    batches and shuffled. On the arith training mix, padding fell from 42% to 4% of the tokens
    (100 batches of 32, measured)."""
    rng = random.Random(seed)
    while True:
        chunk = [next(examples) for _ in range(batch * pool)]
        chunk.sort(key=lambda e: e.length)
        batches = [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
        rng.shuffle(batches)
        yield from batches


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    # bf16 autocast halves the step time on this CPU (avx512_bf16): 0.85 s → 0.45 s for a
    # (32, 140) batch of the 3.4M model (2 threads, machine nearly idle). Master weights and
    # optimizer state stay fp32.
    bf16: bool = True


def lr_at(step: int, cfg: LoopConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def train_loop(
    model: Any,
    batches: Iterator[list[Example]],
    cfg: LoopConfig,
    *,
    desc: str = "train",
    on_step: Callable[[int, float], bool | None] | None = None,
) -> dict[str, float]:
    """Run ``cfg.steps`` optimizer steps; returns summary figures (final loss, seconds, tokens).
    ``on_step(step, loss)`` runs after each step; when it returns True the loop stops there
    (early stopping; ``steps_run`` then says how many steps ran)."""
    from tqdm import tqdm

    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    ema, tokens, start, ran = 0.0, 0, time.time(), 0
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        ids, mask, labels = collate(next(batches))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        # Next-token loss in fp32 on the target tokens only.
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        tokens += int(mask.sum())
        value = float(loss.detach())
        ema = value if step == 0 else 0.98 * ema + 0.02 * value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema:.4f}", tok_s=f"{tokens / max(1e-9, time.time() - start):.0f}")
        ran = step + 1
        if on_step is not None and on_step(step, value):
            break
    bar.close()
    model.eval()
    seconds = time.time() - start
    return {
        "final_loss_ema": ema, "seconds": seconds, "tokens": float(tokens), "steps": float(cfg.steps),
        "steps_run": float(ran),
    }
