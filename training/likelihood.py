"""``ponder train likelihood``: fit the calibration of the ``likelihood`` verifier
(:mod:`ponder.workers.prm.likelihood`) for one policy and one judge, from the policy's own
samples, and save it beside the policy as ``likelihood-<judge>.json``.

Samples are drawn step by step through the policy as a worker serves it (so the policy's token
log-probs are the ones the verifier reads); the judge rescores every solution in one forward
pass (the numbers the verifier's incremental scoring gives, to float rounding: a test checks
it). Every step prefix of every sample is a row (label: the sample's final answer is right,
weight 1/steps); a logistic regression on the standardised features is fitted on 75% of the
questions, its ratio window chosen by within-question AUC on the other 25%, and the held-out
figures (of the fit and of the single best features alone) are saved with it.

    ponder train likelihood --model arith --judge arith-large --dataset arith:validation:256
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ponder.proto.errors import InvalidArgument
from ponder.training.calibration import WINDOWS, Sample, add_sampling_arguments, design_rows, fit_logistic, sample_paths
from ponder.training.grading import span_logprobs_and_gaps
from ponder.training.prm import grouped_auc
from ponder.workers.prm.likelihood import (
    FEATURES,
    LikelihoodCalibration,
    features,
    likelihood_calibration_path,
    pair_fingerprint,
)
from ponder.workers.models import BUILTIN
from ponder.workers.runtime import DEFAULT_MODEL
from ponder.workers.types import SamplingParams

log = logging.getLogger(__name__)


@torch.inference_mode()
def judge_logprobs(judge: Any, samples: Sequence[Sample], batch: int = 64) -> tuple[list[list[list[float]]], list[list[list[float]]]]:
    """Per sample, per step, the judge's log-prob (T = 1) of each of the step's tokens, given the
    prompt and the earlier steps, and each token's gap (one forward pass per sample, batched,
    right-padded)."""
    seqs, spans = [], []
    for s in samples:
        root = s.steps[0].parent
        assert root is not None, "a sample's path starts at its first step; the root holds the prompt"
        ids = list(root.token_ids)
        sp = []
        for step in s.steps:
            sp.append((len(ids), len(ids) + len(step.token_ids)))
            ids += list(step.token_ids)
        seqs.append(ids)
        spans.append(sp)
    return span_logprobs_and_gaps(judge, seqs, spans, 0, batch)


@dataclass
class PoolRow:
    """One sampled solution: its question's index, its grade, and per step the policy's token
    log-probs (recorded while sampling), the judge's and the judge's gaps."""

    question: int
    correct: bool
    own: list[list[float]]
    judge: list[list[float]]
    gaps: list[list[float]]


def pool_rows(samples: Sequence[Sample], judged: tuple[Sequence[list[list[float]]], Sequence[list[list[float]]]]) -> list[PoolRow]:
    return [PoolRow(s.question, s.correct, [list(st.logprobs) for st in s.steps], j, g)
            for s, j, g in zip(samples, *judged)]


def save_pool(rows: Sequence[PoolRow], path: Path, meta: dict[str, Any]) -> None:
    """The pool and how it was drawn (``meta``: command, dataset, samples, temperature, seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "ponder-likelihood-pool", "meta": meta, "rows": [asdict(r) for r in rows]}) + "\n")


def load_pool(path: Path) -> tuple[list[PoolRow], dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument("pool", f"{path} cannot be read as a likelihood pool: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != "ponder-likelihood-pool":
        raise InvalidArgument("pool", f"{path} is not a likelihood pool (written by --save-pool)")
    if data["rows"] and "gaps" not in data["rows"][0]:
        raise InvalidArgument("pool", f"{path} was written before the judge's gaps were recorded; sample it again (--save-pool)")
    rows = [PoolRow(int(r["question"]), bool(r["correct"]), r["own"], r["judge"], r["gaps"]) for r in data["rows"]]
    return rows, dict(data.get("meta", {}))


def prefix_features(row: PoolRow, window: int) -> list[list[float]]:
    """The likelihood features of each step prefix of a solution."""
    own: list[float] = []
    judge: list[float] = []
    gaps: list[float] = []
    out = []
    for o, j, g in zip(row.own, row.judge, row.gaps):
        own.extend(o)
        judge.extend(j)
        gaps.extend(g)
        out.append(features(own, judge, gaps, len(o), window))
    return out


# The candidates the fit chooses among by cross-validated within-question AUC: the feature set
# and the loss (pointwise: logistic regression of correctness, as for the confidence calibration;
# pairwise: a logistic loss on (right, wrong) pairs of one question's samples, which fits the
# ranking selection needs, followed by Platt scaling of the ranking score to P(correct)).
CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pointwise", FEATURES),
    ("pairwise", FEATURES),
    ("pairwise", ("judge_min", "ratio_min")),
    ("pairwise", ("judge_min", "ratio_window_min")),
    ("pairwise", ("judge_min", "judge_mean")),
    ("pairwise", ("judge_min", "judge_mean", "ratio_min")),
    ("pairwise", ("gap_min", "ratio_min")),
    ("pairwise", ("gap_min", "gap_2nd", "ratio_min")),
    ("pairwise", ("gap_min", "gap_2nd", "judge_min", "ratio_min")),
)


def _standardise(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return X.mean(0), X.std(0).clamp(min=1e-6)


def fit_pairwise(X: torch.Tensor, y: torch.Tensor, groups: Sequence[int], l2: float = 1e-3) -> torch.Tensor:
    """Weights (on standardised X) minimising the logistic loss of w·(x_right − x_wrong) over
    every (right, wrong) pair of samples of one question, L2-regularised."""
    by: dict[int, tuple[list[int], list[int]]] = {}
    for i, (g, t) in enumerate(zip(groups, y.tolist())):
        by.setdefault(g, ([], []))[0 if t else 1].append(i)
    pos = [a for right, wrong in by.values() for a in right for _ in wrong]
    neg = [b for right, wrong in by.values() for _ in right for b in wrong]
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    if not pos:
        raise InvalidArgument("dataset", "no question has both right and wrong samples: nothing to rank")
    D = X[pos] - X[neg]
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(D @ w)).mean() + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def fit_candidate(rows: Sequence[PoolRow], loss: str, names: tuple[str, ...], window: int,
                  model: str, fingerprint: str) -> LikelihoodCalibration:
    """One candidate fitted on ``rows``: weights over all :data:`FEATURES` (zero outside ``names``)."""
    cols = [FEATURES.index(n) for n in names]
    if loss == "pointwise":
        X, y, w, _ = design_rows(rows, lambda r: [[x[c] for c in cols] for x in prefix_features(r, window)])
        mean, std, weights, bias = fit_logistic(X, y, w)
    else:
        X = torch.tensor([[prefix_features(r, window)[-1][c] for c in cols] for r in rows], dtype=torch.float64)
        y = torch.tensor([float(r.correct) for r in rows], dtype=torch.float64)
        mu, sd = _standardise(X)
        direction = fit_pairwise((X - mu) / sd, y, [r.question for r in rows])
        z = ((X - mu) / sd) @ direction  # Platt scaling of the ranking score
        (zm,), (zs,), (a,), b = fit_logistic(z[:, None], y, torch.ones_like(y))
        mean, std, bias = mu.tolist(), sd.tolist(), b - a * zm / zs
        weights = [float(v) * a / zs for v in direction]
    full_w, full_m, full_s = [0.0] * len(FEATURES), [0.0] * len(FEATURES), [1.0] * len(FEATURES)
    for c, wt, m, sd_ in zip(cols, weights, mean, std):
        full_w[c], full_m[c], full_s[c] = wt, m, sd_
    return LikelihoodCalibration(model, fingerprint, window, 1, tuple(full_m), tuple(full_s), tuple(full_w), bias)


def within_auc(cal: LikelihoodCalibration, rows: Sequence[PoolRow]) -> float:
    scores = [cal.probability(prefix_features(r, cal.window)[-1]) for r in rows]
    return grouped_auc(scores, [r.correct for r in rows], [r.question for r in rows])


def fit(rows: Sequence[PoolRow], model: str, fingerprint: str, folds: int = 4) -> LikelihoodCalibration:
    """Choose the candidate (loss, features, ratio window) by ``folds``-fold cross-validated
    within-question AUC over questions, refit it on every row; the cross-validated figures of
    every candidate and of single features go into ``fit``."""
    qids = sorted({r.question for r in rows})
    if not any(r.correct for r in rows) or all(r.correct for r in rows):
        raise InvalidArgument("dataset", "the samples must hold right and wrong answers to fit a calibration")
    fold_of = {q: k % folds for k, q in enumerate(qids)}
    grid = []
    best: tuple[float, str, tuple[str, ...], int] | None = None
    for loss, names in CANDIDATES:
        for window in (WINDOWS if "ratio_window_min" in names else (2,)):
            scores: dict[int, float] = {}
            for k in range(folds):
                train = [r for r in rows if fold_of[r.question] != k]
                test = [i for i, r in enumerate(rows) if fold_of[r.question] == k]
                cal = fit_candidate(train, loss, names, window, model, fingerprint)
                scores |= {i: cal.probability(prefix_features(rows[i], window)[-1]) for i in test}
            cv = grouped_auc([scores[i] for i in range(len(rows))], [r.correct for r in rows], [r.question for r in rows])
            grid.append({"loss": loss, "features": list(names), "window": window, "cv_within_question_auc": cv})
            log.info("%s %s window %d: cross-validated within-question AUC %.4f", loss, "+".join(names), window, cv)
            if best is None or cv > best[0] + 1e-9:
                best = (cv, loss, names, window)
    assert best is not None
    cv, loss, names, window = best
    cal = fit_candidate(rows, loss, names, window, model, fingerprint)
    final = [prefix_features(r, window)[-1] for r in rows]
    single = {name: grouped_auc([x[k] for x in final], [r.correct for r in rows], [r.question for r in rows])
              for k, name in enumerate(FEATURES) if name != "length"}
    info = {
        "questions": len(qids), "samples": len(rows), "folds": folds,
        "accuracy": sum(r.correct for r in rows) / len(rows),
        "chosen": {"loss": loss, "features": list(names), "window": window, "cv_within_question_auc": cv},
        "in_sample": {"within_question_auc": within_auc(cal, rows)},
        "single_feature_within_question_auc": single, "grid": grid,
    }
    return LikelihoodCalibration(cal.model, cal.fingerprint, cal.window, 1, cal.mean, cal.std, cal.weights, cal.bias, info)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder train likelihood", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="the policy: arith or an HF model directory")
    p.add_argument("--judge", default="arith-large", help="the judge: a model sharing the policy's tokenizer")
    add_sampling_arguments(p, "arith:validation:512")
    p.add_argument("--out", type=Path, default=None, help="where to save (default: beside the policy)")
    p.add_argument("--save-pool", type=Path, default=None,
                   help="also write the sampled pool (every solution's log-probs under both models) here")
    p.add_argument("--pool", type=Path, default=None, help="refit from a pool written by --save-pool (no sampling)")
    return p


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from ponder.evaluation.evaluate import load_dataset
    from ponder.workers.models import load_hf_model, load_tokenizer, resolve
    from ponder.workers.prm.likelihood import check_same_tokenizer
    from ponder.workers.runtime import build_policy, set_threads

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    if a.samples < 2:
        raise InvalidArgument("samples", "at least 2 samples per question are needed to rank samples of a question")
    started = time.time()
    files, judge_files = resolve(a.model), resolve(a.judge)
    threads = sample_seconds = judge_seconds = 0.0
    meta = {"command": "ponder train likelihood " + " ".join(argv), "dataset": str(a.dataset), "judge": a.judge,
            "samples_per_question": a.samples, "temperature": a.temperature, "seed": a.seed}
    if a.pool is not None:  # refit from a saved pool: no sampling; how the pool was drawn is kept
        rows, drawn = load_pool(a.pool)
        meta |= {k: drawn[k] for k in ("dataset", "samples_per_question", "temperature", "seed") if k in drawn}
        meta["pool"] = {"path": str(a.pool), "drawn_by": drawn.get("command"), "sample_seconds": drawn.get("sample_seconds")}
    else:
        sampling = SamplingParams(temperature=a.temperature, max_step_tokens=a.max_step_tokens)
        items = load_dataset(a.dataset, a.limit)
        policy = build_policy(a.model, a.backend)
        check_same_tokenizer(policy.tokenizer, load_tokenizer(judge_files), a.judge)  # type: ignore[attr-defined]
        threads = set_threads(a.threads, policy)
        with tqdm(total=len(items), desc="sample", unit="q", dynamic_ncols=True, file=sys.stderr) as bar:
            samples = sample_paths(policy, [i.question for i in items], [i.gold for i in items], a.samples, sampling,
                                   max_steps=a.max_steps, seed=a.seed, progress=bar)
        sample_seconds = time.time() - started
        t = time.time()
        rows = pool_rows(samples, judge_logprobs(load_hf_model(judge_files), samples))
        judge_seconds = time.time() - t
        if a.save_pool is not None:
            save_pool(rows, a.save_pool, meta | {"sample_seconds": sample_seconds, "judge_seconds": judge_seconds})
    cal = fit(rows, f"{files.name}+{judge_files.name}", pair_fingerprint(files, judge_files))
    out = a.out or likelihood_calibration_path(files, a.judge)
    cal.fit.update({
        **meta, "threads": threads, "sample_seconds": sample_seconds, "judge_seconds": judge_seconds, "wall_seconds": time.time() - started,
        "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
    })
    cal.save(out)
    if a.model in BUILTIN:  # a committed model's calibration goes into the artifacts' manifest
        from ponder.training import manifest

        root = out.resolve().parents[1]
        if (root / manifest.MANIFEST).exists() and out.resolve().is_relative_to(root):
            manifest.update(root, f"{a.model}-likelihood-{a.judge}", [out.resolve()], cal.fit["command"])
    print(json.dumps({"out": str(out), **cal.fit["chosen"],
                      "single_features": cal.fit["single_feature_within_question_auc"],
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
