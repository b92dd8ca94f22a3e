"""``ponder train report``: the arith models' quality report, written to docs/quality.md with its
figures (PNG) — one command, seeded.

- Policy: pass@1 on the test split (``--samples`` per question at T=0.8), overall and by each
  difficulty knob, and a histogram of per-question pass rates.
- PRM (value head): ROC AUC of step scores against held-out Monte Carlo labels on test
  questions; PRM-weighted best-of-N against majority voting (and best single score) for
  N = 1..16 on the same samples.
- Reviser: pass@1 at revision steps 1..8 (chains on test questions, earlier attempts in context
  exactly as the revision strategy passes them), and the share of correct answers that the next
  revision turns wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ponder.workers.answers import Candidate, select
from ponder.workers.prm.value_head import ValueHead
from ponder.workers.tasks import arith
from ponder.workers.train.checkpoint import load_checkpoint
from ponder.workers.train.evaluate import Samples, decode, prompt_ids, sample_solutions
from ponder.workers.train.mc_labels import LabeledSolution, ModelRollouts, cut_steps, mc_label, step_features
from ponder.workers.train.prm import auc
from ponder.workers.train.quality_doc import write_doc
from ponder.workers.train.sample import generate

log = logging.getLogger(__name__)
ART = Path("artifacts/arith")


@dataclass(frozen=True)
class ReportConfig:
    policy: Path = ART / "policy"
    value_head: Path = ART / "value_head.safetensors"
    reviser: Path = ART / "reviser"
    questions: int = 200  # test questions for pass@1 and best-of-N
    samples: int = 16
    temperature: float = 0.8
    prm_questions: int = 64  # test questions MC-labelled for the AUC
    prm_samples: int = 4
    prm_rollouts: int = 8
    revise_questions: int = 100
    chains: int = 4
    revise_steps: int = 8
    seed: int = 1234
    threads: int = 1
    docs: Path = Path("docs")


def policy_section(samples: Samples) -> dict[str, Any]:
    rates = samples.pass_rates()
    by: dict[str, dict[str, float]] = {}
    for knob in ("n_ops", "digits", "parens"):
        groups: dict[str, list[float]] = {}
        for q, r in zip(samples.questions, rates):
            groups.setdefault(str(getattr(q.knobs, knob)), []).append(r)
        by[knob] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
        by[knob + "_count"] = {k: float(len(v)) for k, v in sorted(groups.items())}
    n = len(rates)
    return {
        "questions": n,
        "samples": len(samples.correct[0]) if samples.correct else 0,
        "pass_at_1": samples.mean(),
        "share_ge_0.8": sum(r >= 0.8 for r in rates) / n,
        "share_le_0.1": sum(r <= 0.1 for r in rates) / n,
        "share_between": sum(0.1 < r < 0.8 for r in rates) / n,
        "no_answer_rate": sum(cut_steps(t) is None for row in samples.texts for t in row) / max(1, n * len(samples.texts[0])),
        "by": by,
        "rates": rates,
    }


def last_step_scores(model: Any, tokenizer: Any, fmt: Any, head: ValueHead, samples: Samples) -> list[list[float | None]]:
    """The value head's score of each sample's answer step (None: no parsable answer)."""
    sols, where = [], []
    for i, (q, row) in enumerate(zip(samples.questions, samples.texts)):
        for j, text in enumerate(row):
            steps = cut_steps(text)
            if steps is not None:
                sols.append(LabeledSolution(q.question, q.answer, steps, [0.0] * len(steps), False))
                where.append((i, j))
    X, _, owner = step_features(model, tokenizer, fmt, sols)
    with torch.no_grad():
        s = torch.sigmoid(head(X))
    last = {}
    for k in range(len(sols)):
        last[k] = float(s[owner == k][-1])
    out: list[list[float | None]] = [[None] * len(row) for row in samples.texts]
    for k, (i, j) in enumerate(where):
        out[i][j] = last[k]
    return out


def selection_curve(samples: Samples, scores: list[list[float | None]], budgets: list[int]) -> dict[str, dict[int, float]]:
    """Accuracy of majority / PRM-weighted / best-score selection over the first N samples."""
    from ponder.workers.answers import is_correct

    curve: dict[str, dict[int, float]] = {"majority": {}, "weighted": {}, "best": {}}
    for n in budgets:
        for mode in curve:
            right = 0
            for q, row, srow in zip(samples.questions, samples.texts, scores):
                cands = []
                for text, score in list(zip(row, srow))[:n]:
                    steps = cut_steps(text)
                    from ponder.workers.answers import extract_answer

                    answer = extract_answer(steps[-1]) if steps else None
                    cands.append(Candidate(answer=answer, solution=text, score=score if score is not None else 0.0))
                sel = select(cands, mode)
                right += is_correct(sel.answer or None, q.answer)
            curve[mode][n] = right / len(samples.questions)
    return curve


def prm_section(model: Any, tokenizer: Any, fmt: Any, head: ValueHead, samples: Samples, cfg: ReportConfig) -> dict[str, Any]:
    qs = arith.questions("test", cfg.prm_questions, seed=cfg.seed + 1)
    roll = ModelRollouts(model, tokenizer, fmt, temperature=cfg.temperature, dtype=torch.bfloat16)
    sols, counts = mc_label(qs, roll, samples=cfg.prm_samples, rollouts_per_step=cfg.prm_rollouts, seed=cfg.seed + 2)
    X, y, owner = step_features(model, tokenizer, fmt, sols)
    with torch.no_grad():
        s = torch.sigmoid(head(X))
    last = torch.tensor([i == len(t.labels) - 1 for t in sols for i in range(len(t.labels))])
    bce = float(torch.nn.functional.binary_cross_entropy(s.clamp(1e-6, 1 - 1e-6), y))
    scores = last_step_scores(model, tokenizer, fmt, head, samples)
    budgets = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= len(samples.texts[0])]
    curve = selection_curve(samples, scores, budgets)
    return {
        "mc_counts": counts,
        "labelled_steps": int(y.numel()),
        "auc_steps": auc(s, y),
        "auc_non_final_steps": auc(s[~last], y[~last]),
        "auc_final_step": auc(s[last], y[last]),
        "bce": bce,
        "selection": curve,
        "weighted_minus_majority_at_max": curve["weighted"][budgets[-1]] - curve["majority"][budgets[-1]],
    }


def revise_section(cfg: ReportConfig, policy_rates: dict[str, float]) -> dict[str, Any]:
    model, tokenizer, fmt = load_checkpoint(cfg.reviser)
    qs = arith.questions("test", cfg.revise_questions, seed=cfg.seed)
    chains = [(q, c) for q in qs for c in range(cfg.chains)]
    attempts: list[list[str]] = [[] for _ in chains]
    correct: list[list[bool]] = [[] for _ in chains]
    for k in range(cfg.revise_steps):
        prompts = [prompt_ids(tokenizer, fmt, q.question, attempts[i]) for i, (q, _) in enumerate(chains)]
        outs = generate(model, prompts, temperature=cfg.temperature, max_new=320, seed=cfg.seed + 100 + k, batch_size=128)
        for i, ((q, _), o) in enumerate(zip(chains, outs)):
            text = decode(tokenizer, o)
            steps = cut_steps(text)
            correct[i].append(steps is not None and arith.grade(arith.STEP_DELIMITER.join(steps), q.answer))
            # What the revision strategy passes on: the attempt's steps up to its answer.
            attempts[i].append(arith.STEP_DELIMITER.join(steps) if steps else text.strip())
        log.info("revision step %d: pass@1 %.3f", k + 1, sum(c[-1] for c in correct) / len(chains))
    by_step = [sum(c[k] for c in correct) / len(chains) for k in range(cfg.revise_steps)]
    was_right = sum(c[k] for c in correct for k in range(cfg.revise_steps - 1))
    turned = sum(c[k] and not c[k + 1] for c in correct for k in range(cfg.revise_steps - 1))
    fixed = sum((not c[k]) and c[k + 1] for c in correct for k in range(cfg.revise_steps - 1))
    was_wrong = sum(not c[k] for c in correct for k in range(cfg.revise_steps - 1))
    last_right = sum(c[-1] for c in correct) / len(chains)
    any_right = sum(any(c) for c in correct) / len(chains)
    # Majority over the whole chain (the paper: select across the chain, not the last attempt).
    maj = 0
    for (q, _), att in zip(chains, attempts):
        cands = [Candidate(answer=_answer(a), solution=a) for a in att]
        maj += arith.grade(f"\\boxed{{{select(cands, 'majority').answer}}}", q.answer)
    return {
        "questions": len(qs), "chains": cfg.chains, "pass_at_1_by_step": by_step,
        "correct_turned_wrong": turned / max(1, was_right), "wrong_turned_correct": fixed / max(1, was_wrong),
        "last_attempt_accuracy": last_right, "chain_majority_accuracy": maj / len(chains),
        "any_attempt_correct": any_right,
        "policy_pass_at_1_same_questions": sum(policy_rates.get(q.question, 0.0) for q in qs) / len(qs),
    }


def _answer(text: str) -> str | None:
    from ponder.workers.answers import extract_answer

    steps = cut_steps(text)
    return extract_answer(steps[-1]) if steps else None


def run(cfg: ReportConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    timings: dict[str, float] = {}
    t = time.time()
    model, tokenizer, fmt = load_checkpoint(cfg.policy)
    qs = arith.questions("test", cfg.questions, seed=cfg.seed)
    samples = sample_solutions(model, tokenizer, fmt, qs, cfg.samples, temperature=cfg.temperature, seed=cfg.seed)
    pol = policy_section(samples)
    timings["policy"] = time.time() - t
    t = time.time()
    head = ValueHead.load(cfg.value_head)
    prm = prm_section(model, tokenizer, fmt, head, samples, cfg)
    timings["prm"] = time.time() - t
    t = time.time()
    rates = {q.question: r for q, r in zip(qs, pol["rates"])}
    rev = revise_section(cfg, rates)
    timings["reviser"] = time.time() - t
    result = {"config": asdict(cfg), "policy": pol, "prm": prm, "reviser": rev, "timings": timings}
    write_doc(result, cfg.docs, cfg.policy.parent)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    d = ReportConfig()
    p = argparse.ArgumentParser(prog="ponder train report", description=__doc__.splitlines()[0])
    for name in ("policy", "value_head", "reviser", "docs"):
        p.add_argument("--" + name.replace("_", "-"), type=Path, default=getattr(d, name))
    for name in ("questions", "samples", "prm_questions", "prm_samples", "prm_rollouts", "revise_questions",
                 "chains", "revise_steps", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--temperature", type=float, default=d.temperature)
    a = p.parse_args(argv)
    cfg = ReportConfig(**{k: getattr(a, k) for k in d.__dataclass_fields__})
    result = run(cfg)
    summary = {
        "pass_at_1": result["policy"]["pass_at_1"],
        "share_between": result["policy"]["share_between"],
        "prm_auc_steps": result["prm"]["auc_steps"],
        "weighted_minus_majority": result["prm"]["weighted_minus_majority_at_max"],
        "revision_pass_at_1": result["reviser"]["pass_at_1_by_step"],
        "correct_turned_wrong": result["reviser"]["correct_turned_wrong"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
