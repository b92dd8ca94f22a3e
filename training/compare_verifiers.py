"""Verifiers side by side on one pool of policy samples, with the quality report's own measures
(:mod:`ponder.training.report`): within-question AUC of the last and the min step score,
and weighted / best-scored selection against majority voting at N samples per question.

A smaller, faster cousin of ``ponder train report``'s verifier table, for comparing a new PRM
against the committed ones without regenerating the whole report::

    python -m ponder.training.compare_verifiers --questions 160 --samples 16 \\
        --verifier checker=artifacts/arith/prm_checker --combine checker --out /tmp/cmp.json

``--judge arith-large`` adds the likelihood verifier with that judge (calibrated when its
calibration is beside the policy). ``--combine NAME`` also fits a logistic regression of sample correctness on the confidence
verifier's last-step logit and NAME's last- and min-step logits, on a pool of *validation*
questions, and scores the test pool with it (the combination is never fitted on test samples).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.tasks import arith
from ponder.training.checkpoint import load_checkpoint
from ponder.training.grading import Samples, sample_solutions
from ponder.training.report import (
    ART,
    _answer,
    _fold,
    confidence_scorer,
    likelihood_scorer,
    prm_model_scorer,
    sample_step_scores,
    select_accuracy,
    within_question_auc,
)

log = logging.getLogger(__name__)
DEFAULT_VERIFIERS = {"PRM model (MC)": ART / "prm", "PRM model (exact)": ART / "prm_exact"}


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def pool(model: Any, tokenizer: Any, fmt: Any, split: str, questions: int, samples: int, seed: int) -> Samples:
    qs = arith.questions(split, questions, seed=seed)
    return sample_solutions(model, tokenizer, fmt, qs, samples, temperature=DEFAULT_TEMPERATURE, seed=seed)


def folded(per_sample: list[list[list[float] | None]], agg: str) -> list[list[float]]:
    return [[_fold(st, agg) for st in row] for row in per_sample]


def measure(samples: Samples, per_sample: list[list[list[float] | None]], n: int) -> dict[str, float]:
    answers = [[_answer(t) for t in row] for row in samples.texts]
    last, low = folded(per_sample, "last"), folded(per_sample, "min")
    return {
        "within_auc_last": within_question_auc(last, samples.correct, per_sample),
        "within_auc_min": within_question_auc(low, samples.correct, per_sample),
        f"weighted_last@{n}": select_accuracy(samples, answers, last, "weighted", n),
        f"weighted_min@{n}": select_accuracy(samples, answers, low, "weighted", n),
        f"best_last@{n}": select_accuracy(samples, answers, last, "best", n),
    }


def _features(conf: list[list[list[float] | None]], other: list[list[list[float] | None]]) -> list[list[list[float] | None]]:
    """Per sample: [confidence last, other last, other min] as logits (None: no answer)."""
    return [
        [None if c is None or o is None else [_logit(c[-1]), _logit(o[-1]), _logit(min(o))] for c, o in zip(cr, orow)]
        for cr, orow in zip(conf, other)
    ]


def fit_combination(feats: list[list[list[float] | None]], correct: list[list[bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (L2 1e-3) of correctness on the features; returns (weights, bias)."""
    X = torch.tensor([f for row in feats for f in row if f is not None], dtype=torch.float64)
    y = torch.tensor([float(c) for fr, cr in zip(feats, correct) for f, c in zip(fr, cr) if f is not None], dtype=torch.float64)
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits((X - mu) / sd @ w + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw, (b - (mu / sd * w).sum()).detach()


def apply_combination(feats: list[list[list[float] | None]], w: torch.Tensor, b: torch.Tensor) -> list[list[list[float] | None]]:
    """The combination's probability as a one-step score list (so last = min = it)."""
    return [
        [None if f is None else [float(torch.sigmoid(torch.tensor(f, dtype=torch.float64) @ w + b))] for f in row]
        for row in feats
    ]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="compare_verifiers", description=__doc__.splitlines()[0])
    p.add_argument("--policy", type=Path, default=ART / "policy")
    p.add_argument("--questions", type=int, default=160)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234, help="the report's seed: its first test questions")
    p.add_argument("--verifier", action="append", default=[], help="NAME=PRM model dir (repeatable)")
    p.add_argument("--judge", action="append", default=[],
                   help="also score with the likelihood verifier of this judge model (its calibration beside the policy when fitted; repeatable)")
    p.add_argument("--no-prm-models", action="store_true", help="leave out the committed PRM models (faster)")
    p.add_argument("--combine", default=None, help="fit confidence + this verifier on validation questions")
    p.add_argument("--val-questions", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write every number and per-sample score here (JSON)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(a.threads)
    started = time.time()
    model, tokenizer, fmt = load_checkpoint(a.policy)
    paths = {} if a.no_prm_models else dict(DEFAULT_VERIFIERS)
    for spec in a.verifier:
        name, _, path = spec.partition("=")
        paths[name] = Path(path)
    test = pool(model, tokenizer, fmt, "test", a.questions, a.samples, a.seed)
    answers = [[_answer(t) for t in row] for row in test.texts]
    n = a.samples
    result: dict[str, Any] = {
        "pool": {"split": "test", "questions": a.questions, "samples": a.samples, "seed": a.seed, "pass_at_1": test.mean()},
        "majority@N": select_accuracy(test, answers, None, "majority", n),
        "oracle@N": sum(any(c) for c in test.correct) / len(test.questions),
        "verifiers": {}, "scores": {},
    }
    conf_path = a.policy / "confidence.json"
    scorers = {"confidence": confidence_scorer(model, tokenizer, fmt, conf_path if conf_path.exists() else None)}
    scorers |= {name: prm_model_scorer(path) for name, path in paths.items() if (path / "config.json").exists()}
    for judge in a.judge:
        from ponder.workers.models import load_hf_model, resolve

        cal = a.policy / f"likelihood-{Path(judge).name}.json"
        scorers[f"likelihood:{judge}"] = likelihood_scorer(
            model, tokenizer, fmt, load_hf_model(resolve(judge)), cal if cal.exists() else None)
    per: dict[str, list[list[list[float] | None]]] = {}
    for name, scorer in scorers.items():
        t = time.time()
        per[name] = sample_step_scores(test, scorer)
        result["verifiers"][name] = measure(test, per[name], n) | {"seconds": time.time() - t}
        log.info("%s: %s", name, json.dumps(result["verifiers"][name]))
    if a.combine:
        val = pool(model, tokenizer, fmt, "validation", a.val_questions, a.samples, a.seed + 1)
        fv = _features(sample_step_scores(val, scorers["confidence"]), sample_step_scores(val, scorers[a.combine]))
        w, b = fit_combination(fv, val.correct)
        comb = apply_combination(_features(per["confidence"], per[a.combine]), w, b)
        name = f"confidence + {a.combine} (logistic, fitted on validation)"
        per[name] = comb
        result["verifiers"][name] = measure(test, comb, n) | {"weights": w.tolist(), "bias": float(b)}
        log.info("%s: %s", name, json.dumps(result["verifiers"][name]))
    result["seconds"] = time.time() - started
    result["scores"] = {k: v for k, v in per.items()}
    result["correct"] = test.correct
    if a.out is not None:
        a.out.write_text(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("scores", "correct")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
