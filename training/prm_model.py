"""A separate small PRM model trained on the same Monte Carlo labels as the value head (issue 6's
optional extra): a copy of the policy fine-tuned end to end so that, at a tag token after every
step, ``sigmoid(logit("+") − logit("-"))`` predicts the step's soft label.

It is saved in the Math-Shepherd layout that :func:`ponder.workers.prm.model_prm.load_prm`
reads (a causal LM plus ``ponder_prm.json`` naming the prompt, the step suffix and its tag), so
the worker loads it with ``--verifier artifacts/arith/prm`` like any other PRM directory.

Why it exists: the value head reads a frozen policy's hidden state, which on arith carries the
question's difficulty but little about whether this sample's arithmetic was right; fine-tuning
the whole network lets the PRM re-check each step (docs/quality.md compares both).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ponder.proto.config import DEFAULT_STEP_DELIMITER
from ponder.training.checkpoint import PAD_ID
from ponder.training.mc_labels import LabeledSolution

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrmModelFormat:
    """Written to ``ponder_prm.json`` (keys of ``model_prm.PRMFormat``). The tag ``@`` is one
    byte-level token that arith text never contains; ``+``/``-`` are single tokens."""

    layout: str = "shepherd"
    prompt_template: str = "{question}\n\n"
    step_suffix: str = " @\n\n"
    tag: str = "@"
    good: str = "+"
    bad: str = "-"
    outcome_join: str = DEFAULT_STEP_DELIMITER


@dataclass(frozen=True)
class PrmModelRecipe:
    steps: int = 600
    batch: int = 16
    lr: float = 3e-4
    eval_every: int = 50
    patience: int = 4  # evaluations without a better held-out score before stopping
    seed: int = 0
    # 0: batches of random solutions (the paper's recipe). k > 0: each batch holds every sample
    # of k questions, so the loss contrasts right and wrong samples of one question.
    questions_per_batch: int = 0
    # What picks the checkpoint: "bce" (held-out BCE against the labels) or "within_auc"
    # (held-out within-question AUC of the last step's score against the answer's correctness).
    select: str = "bce"
    # Checker labels (``--label-kind checker``): each batch also holds this many synthetic groups
    # (a training question's worked solution and its slipped copies, training/checker_labels.py).
    synthetic_groups: int = 0
    max_seconds: float = 0.0  # stop after this much training wall time (0: no limit)


def encode_solution(tokenizer: Any, fmt: PrmModelFormat, s: LabeledSolution) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt, step₁ suffix, step₂ suffix, …`` and the tag position of each step,
    exactly as ``ModelPRM`` builds them (step text stripped, then the suffix)."""
    enc = lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    tag_id = enc(fmt.tag)[0]
    ids = enc(fmt.prompt_template.format(question=s.question))
    tags: list[int] = []
    for step in s.steps:
        piece = enc(step.strip() + fmt.step_suffix)
        at = len(piece) - 1 - piece[::-1].index(tag_id)
        tags.append(len(ids) + at)
        ids += piece
    return ids, tags


def _label_ids(tokenizer: Any, fmt: PrmModelFormat) -> tuple[int, int]:
    """Token ids of the "+" and "-" labels."""
    return tuple(tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (fmt.good, fmt.bad))  # type: ignore[return-value]


def _batch(items: Sequence[tuple[list[int], list[int], list[float]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(ids) for ids, _, _ in items)
    ids = torch.full((len(items), T), PAD_ID, dtype=torch.long)
    rows, cols, labels = [], [], []
    for i, (seq, tags, labs) in enumerate(items):
        ids[i, : len(seq)] = torch.tensor(seq)
        rows += [i] * len(tags)
        cols += tags
        labels += labs
    return ids, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels, dtype=torch.float32)


def _margin(model: Any, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, good: int, bad: int) -> torch.Tensor:
    """logit(+) − logit(−) at the tag positions: (N,). Right padding needs no mask (causal)."""
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # (B, T, D)
    at = hidden[rows, cols]  # (N, D)
    w = model.get_output_embeddings().weight  # (V, D)
    return at @ (w[good] - w[bad]).to(at.dtype)


def _batches(sols: Sequence[LabeledSolution], recipe: PrmModelRecipe, rng: random.Random) -> Iterator[list[int]]:
    """Endless index batches: random solutions, or (``questions_per_batch``) every sample of a
    few questions at a time."""
    if recipe.questions_per_batch <= 0:
        order: list[int] = []
        while True:
            if len(order) < recipe.batch:
                order += rng.sample(range(len(sols)), len(sols))
            idx, order = order[: recipe.batch], order[recipe.batch :]
            yield idx
    by_q: dict[str, list[int]] = {}
    for i, s in enumerate(sols):
        by_q.setdefault(s.question, []).append(i)
    groups = list(by_q.values())
    while True:
        rng.shuffle(groups)
        for i in range(0, len(groups) - recipe.questions_per_batch + 1, recipe.questions_per_batch):
            yield [j for g in groups[i : i + recipe.questions_per_batch] for j in g]


def train_prm_model(
    policy_model: Any, tokenizer: Any, train: Sequence[LabeledSolution], val: Sequence[LabeledSolution],
    recipe: PrmModelRecipe, out: Path, command: str,
    synthetic: Iterator[list[LabeledSolution]] | None = None, meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune a copy of the policy on ``train`` (and, when ``synthetic`` is given, on
    ``recipe.synthetic_groups`` of its groups per batch); the checkpoint is picked on ``val``."""
    from tqdm import tqdm

    from ponder.training.checkpoint import save_checkpoint
    from ponder.training.prm import grouped_auc

    if recipe.select not in ("bce", "within_auc"):
        raise ValueError(f"select must be 'bce' or 'within_auc', got {recipe.select!r}")
    fmt = PrmModelFormat()
    good, bad = _label_ids(tokenizer, fmt)
    model = copy.deepcopy(policy_model).float().train()
    enc_train = [(*encode_solution(tokenizer, fmt, s), s.labels) for s in train]
    enc_val = [(*encode_solution(tokenizer, fmt, s), s.labels) for s in val]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)

    within_min: list[tuple[int, float]] = []  # held-out within-question AUC of the min step score

    def evaluate() -> tuple[float, float]:
        """(held-out BCE, held-out within-question AUC of the last step's score)."""
        model.eval()
        total, n, last, low = 0.0, 0, [], []
        with torch.no_grad():
            for i in range(0, len(enc_val), 64):
                part = enc_val[i : i + 64]
                ids, rows, cols, y = _batch(part)
                margin = _margin(model, ids, rows, cols, good, bad)
                total += float(bce(margin, y, reduction="sum"))
                n += len(y)
                ends = torch.tensor(list(itertools.accumulate(len(t) for _, t, _ in part))) - 1
                last += margin[ends].tolist()
                starts = [0, *(ends[:-1] + 1).tolist()]
                low += [float(margin[a : e + 1].min()) for a, e in zip(starts, ends.tolist())]
        model.train()
        within = grouped_auc(last, [s.correct for s in val], [s.question for s in val])
        within_min.append((len(within_min), grouped_auc(low, [s.correct for s in val], [s.question for s in val])))
        return total / max(1, n), within

    def better(v: tuple[float, float], best: tuple[float, float]) -> bool:
        return v[1] > best[1] + 1e-4 if recipe.select == "within_auc" else v[0] < best[0] - 1e-4

    started = time.time()
    best = evaluate()
    best_state, best_step, bad_evals, history = None, 0, 0, [(0, float("nan"), *best)]
    batches = _batches(train, recipe, rng) if train else None
    enc = lambda s: (*encode_solution(tokenizer, fmt, s), s.labels)  # noqa: E731
    bar = tqdm(range(recipe.steps), desc="train PRM model", unit="step", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        items = [enc_train[i] for i in next(batches)] if batches is not None else []
        if synthetic is not None:
            items += [enc(s) for _ in range(recipe.synthetic_groups) for s in next(synthetic)]
        ids, rows, cols, y = _batch(items)
        # fp32: bf16 autocast made this backward 16x slower here (45.5 s vs 2.9 s for a
        # (32, 185) batch, one thread, torch 2.13), though it halves the SFT loop's steps.
        margin = _margin(model, ids, rows, cols, good, bad)
        loss = bce(margin, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % recipe.eval_every == 0:
            v = evaluate()
            history.append((step + 1, float(loss.detach()), *v))
            bar.set_postfix(val_bce=f"{v[0]:.4f}", within_auc=f"{v[1]:.3f}")
            log.info("step %d: train loss %.4f, held-out BCE %.4f, within-question AUC %.4f (min %.4f), %.0f s",
                     step + 1, float(loss.detach()), v[0], v[1], within_min[-1][1], time.time() - started)
            if better(v, best):
                best, best_step, bad_evals = v, step + 1, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad_evals += 1
                if bad_evals >= recipe.patience:
                    break
            if recipe.max_seconds and time.time() - started > recipe.max_seconds:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    elif len(history) > 1:
        # No evaluation beat the untrained copy: the last weights are kept, and said so.
        best_step, best = history[-1][0], (history[-1][2], history[-1][3])
    model.eval()
    summary = {
        "recipe": asdict(recipe), "format": asdict(fmt), "command": command, "val_bce": best[0],
        "val_within_question_auc": best[1], "best_step": best_step,
        "history": history,  # (step, train loss, held-out BCE, held-out within-question AUC)
        "val_within_question_auc_min": [w for _, w in within_min],  # per evaluation, min-step score
        "seconds": time.time() - started,
        **(meta or {}),
    }
    files = save_checkpoint(model, tokenizer, out, {}, summary)
    (out / "ponder.json").unlink()  # not a policy: its format file is ponder_prm.json
    (out / "ponder_prm.json").write_text(json.dumps(asdict(fmt), indent=1) + "\n")
    summary["files"] = [str(f) for f in files if f.name != "ponder.json"] + [str(out / "ponder_prm.json")]
    return summary


@torch.no_grad()
def prm_model_scores(model: Any, tokenizer: Any, sols: Sequence[LabeledSolution], batch: int = 64) -> list[list[float]]:
    """Step scores of a PRM model directory's model on many solutions at once (teacher-forced),
    the same numbers ``ModelPRM.score`` streams step by step (tests/test_train_prm_model.py)."""
    fmt = PrmModelFormat()
    good, bad = _label_ids(tokenizer, fmt)
    enc = [(*encode_solution(tokenizer, fmt, s), [0.0] * len(s.steps)) for s in sols]
    out: list[list[float]] = []
    for i in range(0, len(enc), batch):
        part = enc[i : i + batch]
        ids, rows, cols, _ = _batch(part)
        p = torch.sigmoid(_margin(model, ids, rows, cols, good, bad)).tolist()
        k = 0
        for _, tags, _ in part:
            out.append(p[k : k + len(tags)])
            k += len(tags)
    return out
