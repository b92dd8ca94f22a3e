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
from pathlib import Path
from typing import Any

import torch

from ponder.proto.config import DEFAULT_MAX_STEP_TOKENS, DEFAULT_MAX_STEPS, DEFAULT_TEMPERATURE
from ponder.proto.errors import InvalidArgument
from ponder.training.calibration import (
    WINDOWS,
    Sample,
    design_rows,
    evaluate_scores,
    fit_logistic,
    sample_paths,
    split_questions,
)
from ponder.workers.prm.likelihood import (
    FEATURES,
    LikelihoodCalibration,
    features,
    likelihood_calibration_path,
    pair_fingerprint,
)
from ponder.workers.runtime import BACKENDS, DEFAULT_MODEL
from ponder.workers.types import SamplingParams

log = logging.getLogger(__name__)


@torch.inference_mode()
def judge_logprobs(judge: Any, samples: Sequence[Sample], batch: int = 64) -> list[list[list[float]]]:
    """Per sample, per step, the judge's log-prob (T = 1) of each of the step's tokens, given the
    prompt and the earlier steps (one forward pass per sample, batched, right-padded)."""
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
    out: list[list[list[float]]] = [[] for _ in samples]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch):
        rows = order[b : b + batch]
        T = max(len(seqs[i]) for i in rows)
        padded = torch.zeros((len(rows), T), dtype=torch.long)  # right padding: causal attention never sees it
        for j, i in enumerate(rows):
            padded[j, : len(seqs[i])] = torch.tensor(seqs[i])
        lp = torch.log_softmax(judge(input_ids=padded).logits.float(), -1)
        for j, i in enumerate(rows):
            got = lp[j, : len(seqs[i]) - 1].gather(1, torch.tensor(seqs[i][1:])[:, None])[:, 0]
            out[i] = [got[a - 1 : e - 1].tolist() for a, e in spans[i]]
    return out


def prefix_features(s: Sample, judge_steps: list[list[float]], window: int) -> list[list[float]]:
    """The likelihood features of each step prefix of ``s``."""
    own: list[float] = []
    judge: list[float] = []
    rows = []
    for step, jl in zip(s.steps, judge_steps):
        own.extend(step.logprobs)
        judge.extend(jl)
        rows.append(features(own, judge, len(step.logprobs), window))
    return rows


def fit(samples: Sequence[Sample], judged: dict[int, list[list[float]]], model: str, fingerprint: str,
        heldout_share: float = 0.25) -> LikelihoodCalibration:
    """Choose the ratio window on held-out questions, fit on the rest; the held-out figures of
    the fit and of single features go into ``fit``."""
    qids, train_q, train, held = split_questions(samples, heldout_share)

    def final_features(s: Sample, window: int) -> list[float]:
        return prefix_features(s, judged[id(s)], window)[-1]

    best: tuple[float, LikelihoodCalibration] | None = None
    grid = []
    for window in WINDOWS:
        X, y, w, _ = design_rows(train, lambda s: prefix_features(s, judged[id(s)], window))  # noqa: B023
        mean, std, weights, bias = fit_logistic(X, y, w)
        cal = LikelihoodCalibration(model, fingerprint, window, 1, tuple(mean), tuple(std), tuple(weights), bias)
        score = evaluate_scores([cal.probability(final_features(s, window)) for s in held], held)["within_question_auc"]
        grid.append({"window": window, "heldout_within_question_auc": score})
        if best is None or score > best[0] + 1e-9:
            best = (score, cal)
    assert best is not None
    cal = best[1]
    held_x = [final_features(s, cal.window) for s in held]
    single = {name: evaluate_scores([x[k] for x in held_x], held)["within_question_auc"]
              for k, name in enumerate(FEATURES) if name != "length"}
    info = {
        "questions": len(qids), "samples": len(samples), "train_questions": len(train_q),
        "heldout_questions": len(qids) - len(train_q), "train_accuracy": sum(s.correct for s in train) / len(train),
        "heldout": evaluate_scores([cal.probability(x) for x in held_x], held),
        "heldout_single_feature_within_question_auc": single, "grid": grid,
    }
    return LikelihoodCalibration(cal.model, cal.fingerprint, cal.window, 1, cal.mean, cal.std, cal.weights, cal.bias, info)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder train likelihood", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="the policy: arith or an HF model directory")
    p.add_argument("--judge", default="arith-large", help="the judge: a model sharing the policy's tokenizer")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--dataset", default="arith:validation:256",
                   help="questions with answers: a JSONL file (GSM8K/MATH style) or arith:SPLIT[:N[:SEED]]")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions")
    p.add_argument("--samples", type=int, default=8, help="solutions per question")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    p.add_argument("--max-step-tokens", type=int, default=DEFAULT_MAX_STEP_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: auto, as for a worker)")
    p.add_argument("--out", type=Path, default=None, help="where to save (default: beside the policy)")
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
    sampling = SamplingParams(temperature=a.temperature, max_step_tokens=a.max_step_tokens)
    items = load_dataset(a.dataset, a.limit)
    started = time.time()
    files, judge_files = resolve(a.model), resolve(a.judge)
    policy = build_policy(a.model, a.backend)
    check_same_tokenizer(policy.tokenizer, load_tokenizer(judge_files), a.judge)  # type: ignore[attr-defined]
    threads = set_threads(a.threads, policy)
    with tqdm(total=len(items), desc="sample", unit="q", dynamic_ncols=True, file=sys.stderr) as bar:
        samples = sample_paths(policy, [i.question for i in items], [i.gold for i in items], a.samples, sampling,
                               max_steps=a.max_steps, seed=a.seed, progress=bar)
    sample_seconds = time.time() - started
    judge = load_hf_model(judge_files)
    t = time.time()
    judged = {id(s): jl for s, jl in zip(samples, judge_logprobs(judge, samples))}
    judge_seconds = time.time() - t
    cal = fit(samples, judged, f"{files.name}+{judge_files.name}", pair_fingerprint(files, judge_files))
    out = a.out or likelihood_calibration_path(files, a.judge)
    cal.fit.update({
        "command": "ponder train likelihood " + " ".join(argv), "dataset": str(a.dataset), "judge": a.judge,
        "samples_per_question": a.samples, "temperature": a.temperature, "threads": threads,
        "sample_seconds": sample_seconds, "judge_seconds": judge_seconds, "wall_seconds": time.time() - started,
        "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
    })
    cal.save(out)
    if a.model == "arith":
        from ponder.training import manifest

        root = out.resolve().parents[1]
        if (root / manifest.MANIFEST).exists() and out.resolve().is_relative_to(root):
            manifest.update(root, f"{a.model}-likelihood-{a.judge}", [out.resolve()], cal.fit["command"])
    print(json.dumps({"out": str(out), "window": cal.window, **cal.fit["heldout"],
                      "single_features": cal.fit["heldout_single_feature_within_question_auc"],
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
