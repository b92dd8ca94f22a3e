"""``ponder train confidence``: fit a model's confidence calibration (the ``confidence`` verifier,
:mod:`ponder.workers.prm.confidence`) once, from its own samples, and save it beside the model.

Samples are drawn step by step through the model's :class:`~ponder.workers.policy.Policy` (the
engine or plain transformers, as a worker serves it), so the token log-probs are exactly the ones
the verifier will read. Every step prefix of every sample is a row (features of the path so far,
label = the sample's final answer is right, weight 1/steps so each sample counts once);
a logistic regression on the standardised features is fitted on 75% of the questions, its
sliding-window and tail lengths chosen by within-question AUC on the other 25%, and the
held-out figures (within-question AUC, AUC, Brier score, calibration error) are saved in the
file with the fit.

    ponder train confidence --model arith --dataset arith:validation:256
    ponder train confidence --model smollm2 --dataset GSM8K/gsm8k_train.jsonl --limit 64
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from ponder.proto.config import DEFAULT_MAX_STEP_TOKENS, DEFAULT_MAX_STEPS, DEFAULT_TEMPERATURE
from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import extract_answer, is_correct
from ponder.workers.policy import Policy
from ponder.workers.runtime import BACKENDS, DEFAULT_MODEL
from ponder.workers.prm.confidence import (
    Calibration,
    ConfidenceVerifier,
    calibration_path,
    features,
    model_fingerprint,
)
from ponder.training.prm import auc, grouped_auc
from ponder.workers.types import Node, Prompt, SamplingParams

log = logging.getLogger(__name__)
WINDOWS = (2, 4, 8, 16, 32)
TAILS = (8, 32, 128)


class Graded(Protocol):
    correct: bool


S = TypeVar("S", bound=Graded)


@dataclass
class Sample:
    question: int  # index of the question
    steps: list[Node]  # the path, first step first
    correct: bool


def sample_paths(
    policy: Policy, questions: Sequence[str], golds: Sequence[str], n: int, sampling: SamplingParams,
    *, max_steps: int = 40, seed: int = 0, rows: int = 256, progress: Any = None,
) -> list[Sample]:
    """``n`` solutions per question, sampled one step at a time through ``policy`` (all live rows
    of up to ``rows // n`` questions in one expand call), graded against ``golds``."""
    out: list[Sample] = []
    per = max(1, rows // max(1, n))
    next_id = 0
    for start in range(0, len(questions), per):
        chunk = list(range(start, min(len(questions), start + per)))
        roots_out = policy.prefill([Prompt(questions[i]) for i in chunk])
        roots: list[Node] = []
        for i, po in zip(chunk, roots_out):
            roots.append(Node(id=next_id, parent=None, depth=0, token_ids=po.token_ids, handle=po.handle,
                              prompt=Prompt(questions[i])))
            next_id += 1
        every: list[Node] = list(roots)
        live = [(qi, root) for qi, root in zip(chunk, roots) for _ in range(n)]
        done: list[tuple[int, Node]] = []
        for depth in range(max_steps):
            if not live:
                break
            parents = [node for _, node in live]
            seeds = [seed * 1_000_003 + next_id + k for k in range(len(parents))]
            outs = policy.expand(parents, [sampling] * len(parents), seeds)
            nxt = []
            for (qi, parent), o in zip(live, outs):
                child = Node(id=next_id, parent=parent, depth=parent.depth + 1, text=o.text, token_ids=o.token_ids,
                             finished=o.finished, stop_reason=o.stop_reason, handle=o.handle, logprobs=o.logprobs)
                next_id += 1
                every.append(child)
                # A step that states the answer ends the solution, as in the search strategies.
                if o.finished or "\\boxed" in o.text or depth == max_steps - 1:
                    done.append((qi, child))
                else:
                    nxt.append((qi, child))
            live = nxt
        for qi, leaf in done:
            text = leaf.solution_text(policy.step_delimiter)
            out.append(Sample(qi, leaf.path(), is_correct(extract_answer(text), golds[qi])))
        policy.release([node for node in every if node.handle is not None])
        if progress is not None:
            progress.update(len(chunk))
    return out


def design(samples: Sequence[Sample], window: int, tail: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X (R, F) every step prefix's features, y (R,), weight (R,), last-row flags (R,))."""
    return design_rows(samples, lambda s: confidence_prefix_features(s, window, tail))


def confidence_prefix_features(s: Sample, window: int, tail: int) -> list[list[float]]:
    """The confidence features of each step prefix of ``s`` (first step first)."""
    lps: list[float] = []
    out = []
    for step in s.steps:
        lps.extend(step.logprobs)
        out.append(features(lps, step.logprobs, window, tail))
    return out


def design_rows(
    samples: Sequence[S], prefix_features: Callable[[S], list[list[float]]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step prefix of every sample (anything with ``correct``) as a row of
    ``prefix_features``, labelled with the sample's correctness and weighted 1/steps (each sample counts once)."""
    X, y, w, last = [], [], [], []
    for s in samples:
        rows = prefix_features(s)
        for k, x in enumerate(rows):
            X.append(x)
            y.append(float(s.correct))
            w.append(1.0 / len(rows))
            last.append(k == len(rows) - 1)
    return (torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
            torch.tensor(w, dtype=torch.float64), torch.tensor(last))


def fit_logistic(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float = 1e-3) -> tuple[list[float], list[float], list[float], float]:
    """Weighted L2-regularised logistic regression on standardised features (LBFGS):
    (mean, std, weights, bias)."""
    mean = X.mean(0)
    std = X.std(0).clamp(min=1e-6)
    Z = (X - mean) / std
    beta = torch.zeros(X.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta], max_iter=200, line_search_fn="strong_wolfe")
    wn = w / w.sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = Z @ beta[:-1] + beta[-1]
        loss = (wn * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
        loss = loss + l2 * (beta[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    b = beta.detach()
    return mean.tolist(), std.tolist(), b[:-1].tolist(), float(b[-1])


def calibration_error(p: Sequence[float], y: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error: the bin-weighted |mean prediction − accuracy| over
    ``bins`` equal-width bins."""
    total, err = len(p), 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, x in enumerate(p) if lo <= x < hi or (b == bins - 1 and x == 1.0)]
        if idx:
            err += len(idx) / total * abs(sum(p[i] for i in idx) / len(idx) - sum(y[i] for i in idx) / len(idx))
    return err


def evaluate_scores(final: Sequence[float], samples: Sequence[Sample]) -> dict[str, float]:
    y = [float(s.correct) for s in samples]
    t = torch.tensor(final, dtype=torch.float64)
    return {
        "within_question_auc": grouped_auc(final, [s.correct for s in samples], [s.question for s in samples]),
        "auc": auc(t, torch.tensor(y)),
        "brier": float(((t - torch.tensor(y)) ** 2).mean()) if final else float("nan"),
        "calibration_error": calibration_error(final, y),
    }


def split_questions(samples: Sequence[Sample], heldout_share: float) -> tuple[list[int], set[int], list[Sample], list[Sample]]:
    """(all question ids, training ids, training samples, held-out samples): the first
    1 − ``heldout_share`` of the questions train, the rest are held out."""
    qids = sorted({s.question for s in samples})
    cut = max(1, int(round(len(qids) * (1 - heldout_share))))
    train_q = set(qids[:cut])
    train = [s for s in samples if s.question in train_q]
    held = [s for s in samples if s.question not in train_q] or train
    if not any(s.correct for s in train) or all(s.correct for s in train):
        raise InvalidArgument("dataset", "the samples must hold right and wrong answers to fit a calibration")
    return qids, train_q, train, held


def fit_calibration(samples: Sequence[Sample], model: str, fingerprint: str, heldout_share: float = 0.25) -> Calibration:
    """Choose window and tail on held-out questions, fit on the rest; the held-out figures of the
    chosen fit (and of plain mean log-prob, DeepConf's baseline) go into ``fit``."""
    qids, train_q, train, held = split_questions(samples, heldout_share)
    best: tuple[float, Calibration] | None = None
    grid: list[dict[str, float]] = []
    for window in WINDOWS:
        for tail in TAILS:
            X, y, w, _ = design(train, window, tail)
            mean, std, weights, bias = fit_logistic(X, y, w)
            cal = Calibration(model, fingerprint, window, tail, tuple(mean), tuple(std), tuple(weights), bias)
            final = [ConfidenceVerifier(cal).probability(s.steps[-1]) for s in held]
            score = evaluate_scores(final, held)["within_question_auc"]
            grid.append({"window": window, "tail": tail, "heldout_within_question_auc": score})
            if best is None or score > best[0] + 1e-9:
                best = (score, cal)
    assert best is not None
    cal = best[1]
    final = [ConfidenceVerifier(cal).probability(s.steps[-1]) for s in held]
    mean_lp = [ConfidenceVerifier(None).probability(s.steps[-1]) for s in held]  # exp(mean log-prob)
    fit = {
        "questions": len(qids), "samples": len(samples), "train_questions": len(train_q),
        "heldout_questions": len(qids) - len(train_q), "train_accuracy": sum(s.correct for s in train) / len(train),
        "heldout": evaluate_scores(final, held), "heldout_mean_logprob_only": evaluate_scores(mean_lp, held),
        "grid": grid,
    }
    return Calibration(cal.model, cal.fingerprint, cal.window, cal.tail, cal.mean, cal.std, cal.weights, cal.bias, fit)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder train confidence", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="arith, smollm2, a .gguf file or an HF model directory")
    add_sampling_arguments(p, "arith:validation:256")
    p.add_argument("--out", type=Path, default=None, help="where to save (default: beside the model)")
    return p


def add_sampling_arguments(p: argparse.ArgumentParser, dataset: str) -> None:
    """The options of a calibration's sample pool (``train confidence`` and ``train likelihood``)."""
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--dataset", default=dataset,
                   help="questions with answers: a JSONL file (GSM8K/MATH style) or arith:SPLIT[:N[:SEED]]")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions")
    p.add_argument("--samples", type=int, default=8, help="solutions per question")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    p.add_argument("--max-step-tokens", type=int, default=DEFAULT_MAX_STEP_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: auto, as for a worker)")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from ponder.evaluation.evaluate import load_dataset
    from ponder.workers.models import resolve
    from ponder.workers.runtime import build_policy, set_threads

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    if a.samples < 2:
        raise InvalidArgument("samples", "at least 2 samples per question are needed to rank samples of a question")
    sampling = SamplingParams(temperature=a.temperature, max_step_tokens=a.max_step_tokens)
    items = load_dataset(a.dataset, a.limit)
    started = time.time()
    files = resolve(a.model)
    policy = build_policy(a.model, a.backend)
    threads = set_threads(a.threads, policy)
    with tqdm(total=len(items), desc="sample", unit="q", dynamic_ncols=True, file=sys.stderr) as bar:
        samples = sample_paths(policy, [i.question for i in items], [i.gold for i in items], a.samples, sampling,
                               max_steps=a.max_steps, seed=a.seed, progress=bar)
    sample_seconds = time.time() - started
    cal = fit_calibration(samples, files.name, model_fingerprint(files))
    out = a.out or calibration_path(files)
    cal.fit.update({
        "command": "ponder train confidence " + " ".join(argv), "dataset": str(a.dataset),
        "samples_per_question": a.samples, "temperature": a.temperature, "threads": threads,
        "sample_seconds": sample_seconds, "wall_seconds": time.time() - started,
        "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
    })
    cal.save(out)
    if a.model in ("arith", "arith-reviser"):
        from ponder.training import manifest

        root = out.resolve().parents[1]
        if (root / manifest.MANIFEST).exists() and out.resolve().is_relative_to(root):
            manifest.update(root, f"{a.model}-confidence", [out.resolve()], cal.fit["command"])
    print(json.dumps({"out": str(out), "window": cal.window, "tail": cal.tail, **cal.fit["heldout"],
                      "mean_logprob_only": cal.fit["heldout_mean_logprob_only"], "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
