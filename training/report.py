"""``ponder train report``: the arith models' quality report, written to docs/quality.md with its
figures (PNG) — one command, seeded.

- Policy: pass@1 on the test split (``--samples`` per question at T=0.8), overall and by each
  difficulty knob, and a histogram of per-question pass rates.
- Verifiers side by side — the value head and the separate PRM model trained on Monte Carlo
  labels (the paper's recipe) and on the task's exact process labels, and the confidence
  verifier (the policy's own token probabilities, calibrated): ROC AUC of step scores against
  held-out Monte Carlo and exact labels, the label noise of Monte Carlo labels, within-question
  AUC, and PRM-weighted best-of-N against majority voting (and best single score) for
  N = 1..64 on one pool of samples.
- Search: beam search against weighted best-of-N at N = 4, 16, 64 through the real search loop
  (the engine and the model's default verifier), split by number of operations and by thirds
  of the questions' pass rate.
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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import Candidate, extract_answer, is_correct, select
from ponder.workers.prm.value_head import ValueHead
from ponder.tasks import arith
from ponder.workers.models import format_prompt
from ponder.training.checkpoint import EOS_ID, PAD_ID, load_checkpoint
from ponder.training.grading import Samples, decode, prompt_ids, sample_solutions, span_logprobs_and_gaps
from ponder.training.mc_labels import LabeledSolution, ModelRollouts, cut_steps, mc_label, step_features
from ponder.training.prm import auc
from ponder.training.quality_doc import _read, write_doc
from ponder.training.sample import generate
from ponder.workers.verifier import aggregate

log = logging.getLogger(__name__)
ART = Path("artifacts/arith")


@dataclass(frozen=True)
class ReportConfig:
    policy: Path = ART / "policy"
    value_head: Path = ART / "value_head.safetensors"
    reviser: Path = ART / "reviser"
    # scores the reviser's own chain when the reviser reads scores (its calibration beside it)
    reviser_verifier: str = "likelihood:arith-large"
    prm_model: Path | None = ART / "prm"  # the optional separate PRM model (skipped if absent)
    value_head_exact: Path | None = ART / "value_head_exact.safetensors"  # exact labels (skipped if absent)
    prm_exact: Path | None = ART / "prm_exact"
    confidence: Path | None = ART / "policy" / "confidence.json"
    judge: str | None = "arith-large"  # the likelihood verifier's judge (skipped if not built in)
    likelihood: Path | None = ART / "policy" / "likelihood-arith-large.json"
    questions: int = 160  # test questions for pass@1 and best-of-N
    samples: int = 64
    search_questions: int = 64  # the first questions of the pool, run through the search loop
    search_budgets: tuple[int, ...] = (4, 16, 64)
    temperature: float = DEFAULT_TEMPERATURE
    prm_questions: int = 64  # test questions MC-labelled for the AUC
    prm_samples: int = 4
    prm_rollouts: int = 4
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


StepScorer = Callable[[list[LabeledSolution]], list[list[float]]]


def value_head_scorer(model: Any, tokenizer: Any, fmt: Any, head: ValueHead) -> StepScorer:
    def score(sols: list[LabeledSolution]) -> list[list[float]]:
        X, _, owner = step_features(model, tokenizer, fmt, sols)
        with torch.no_grad():
            p = torch.sigmoid(head(X))
        return [p[owner == k].tolist() for k in range(len(sols))]

    return score


def token_logprobs(model: Any, tokenizer: Any, fmt: Any, sols: list[LabeledSolution], batch: int = 64) -> list[list[list[float]]]:
    """Per solution, per step, the log-prob (T=1) of each of the step's tokens under the policy,
    teacher-forced on the canonical sequence ``prompt, step, delimiter, …, answer step, EOS``:
    the numbers the engine returns as ``StepOutput.logprobs`` while sampling that solution
    (a step's tokens include its delimiter; the answer step's, its EOS)."""
    return token_logprobs_and_gaps(model, tokenizer, fmt, sols, batch)[0]


@torch.inference_mode()
def token_logprobs_and_gaps(
    model: Any, tokenizer: Any, fmt: Any, sols: list[LabeledSolution], batch: int = 64,
) -> tuple[list[list[list[float]]], list[list[list[float]]]]:
    """:func:`token_logprobs` and each token's gap (its log-prob minus the model's highest)."""
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    seqs, spans = [], []
    for s in sols:
        ids = enc(format_prompt(tokenizer, fmt, s.question))
        sp = []
        for i, step in enumerate(s.steps):
            start = len(ids)
            ids += enc(step) + ([EOS_ID] if i == len(s.steps) - 1 else enc(arith.STEP_DELIMITER))
            sp.append((start, len(ids)))
        seqs.append(ids)
        spans.append(sp)
    return span_logprobs_and_gaps(model, seqs, spans, PAD_ID, batch)


def confidence_scorer(model: Any, tokenizer: Any, fmt: Any, path: Path | None) -> StepScorer:
    """The confidence verifier's step scores (each over the path so far), as the worker computes
    them from the log-probs the policy returns."""
    from ponder.workers.prm.confidence import Calibration, ConfidenceVerifier, features

    ver = ConfidenceVerifier(Calibration.load(path) if path is not None else None)

    def score(sols: list[LabeledSolution]) -> list[list[float]]:
        out = []
        for steps in token_logprobs(model, tokenizer, fmt, sols):
            lps: list[float] = []
            row = []
            for newest in steps:
                lps.extend(newest)
                x = features(lps, newest, ver.window, ver.tail)
                row.append(ver.from_features(x))
            out.append(row)
        return out

    return score


def likelihood_scorer(model: Any, tokenizer: Any, fmt: Any, judge: Any, path: Path | None) -> StepScorer:
    """The likelihood verifier's step scores (each over the path so far) with ``judge`` reading
    the policy's tokens, as the worker computes them (the policy's log-probs are the ones it
    returns while sampling)."""
    from ponder.workers.prm.likelihood import LikelihoodCalibration, features, probability

    cal = LikelihoodCalibration.load(path) if path is not None else None
    window = cal.window if cal is not None else 4

    def score(sols: list[LabeledSolution]) -> list[list[float]]:
        out = []
        judged = token_logprobs_and_gaps(judge, tokenizer, fmt, sols)
        for own_steps, judge_steps, gap_steps in zip(token_logprobs(model, tokenizer, fmt, sols), *judged):
            own: list[float] = []
            jud: list[float] = []
            gaps: list[float] = []
            row = []
            for o, j, g in zip(own_steps, judge_steps, gap_steps):
                own.extend(o)
                jud.extend(j)
                gaps.extend(g)
                row.append(probability(cal, features(own, jud, gaps, len(o), window)))
            out.append(row)
        return out

    return score


def label_noise(mc: list[LabeledSolution]) -> dict[str, float]:
    """How Monte Carlo labels (a step is good when ≥ half its rollouts succeed) agree with the
    exact process labels of the same steps (the answer step, labelled by correctness in both,
    left out)."""
    pairs = [(m >= 0.5, e == 1.0) for s in mc for m, e in zip(s.labels[:-1], arith.step_labels(s.steps, s.gold)[:-1])]
    good = [m for m, e in pairs if e]
    bad = [m for m, e in pairs if not e]
    return {
        "steps": float(len(pairs)),
        "agreement": sum(m == e for m, e in pairs) / max(1, len(pairs)),
        "exact_good_labelled_bad": sum(not m for m in good) / max(1, len(good)),
        "exact_bad_labelled_good": sum(bad) / max(1, len(bad)),
        "exact_good_share": len(good) / max(1, len(pairs)),
    }


def prm_model_scorer(path: Path) -> StepScorer:
    from ponder.training.prm_model import prm_model_scores

    model, tokenizer, _ = load_checkpoint(path)
    return lambda sols: prm_model_scores(model, tokenizer, sols)


def sample_step_scores(samples: Samples, scorer: StepScorer) -> list[list[list[float] | None]]:
    """Per-step scores of every sample (None: no parsable answer, never voted)."""
    sols, where = [], []
    for i, (q, row) in enumerate(zip(samples.questions, samples.texts)):
        for j, text in enumerate(row):
            steps = cut_steps(text)
            if steps is not None:
                sols.append(LabeledSolution(q.question, q.answer, steps, [0.0] * len(steps), False))
                where.append((i, j))
    scores = scorer(sols)
    out: list[list[list[float] | None]] = [[None] * len(row) for row in samples.texts]
    for (i, j), sc in zip(where, scores):
        out[i][j] = sc
    return out


def _fold(steps: list[float] | None, aggregation: str) -> float:
    """A solution's score from its step scores, folded as the search loop folds them."""
    if not steps:
        return 0.0
    agg: float | None = None
    for i, score in enumerate(steps):
        agg = aggregate(agg, i, score, aggregation)
    return float(agg)  # type: ignore[arg-type]


def select_accuracy(
    samples: Samples, answers: list[list[str | None]], scores: list[list[float]] | None, mode: str, n: int,
    power: float = 1.0,
) -> float:
    """Accuracy of selecting among each question's first ``n`` samples (weighted votes count
    ``score ** power``); ``answers`` are the samples' extracted answers (parsed once by the caller)."""
    right = 0
    for i, (q, row) in enumerate(zip(samples.questions, samples.texts)):
        cands = [
            Candidate(answer=answers[i][j], solution=t, score=scores[i][j] if scores is not None else None)
            for j, t in enumerate(row[:n])
        ]
        right += is_correct(select(cands, mode, power).answer or None, q.answer)
    return right / len(samples.questions)


def within_question_auc(
    scores: list[list[float]], correct: list[list[bool]], per_sample: list[list[list[float] | None]]
) -> float:
    """How often a correct sample outscores a wrong one *of the same question* (ties half;
    samples without an answer left out). This, not the AUC across questions, is what decides
    whether scores can improve on majority voting."""
    hits, pairs = 0.0, 0
    for srow, crow, prow in zip(scores, correct, per_sample):
        right = [s for s, c, p in zip(srow, crow, prow) if c and p is not None]
        wrong = [s for s, c, p in zip(srow, crow, prow) if not c and p is not None]
        for a in right:
            for b in wrong:
                hits += 1.0 if a > b else 0.5 if a == b else 0.0
                pairs += 1
    return hits / pairs if pairs else float("nan")


def prm_section(
    model: Any, tokenizer: Any, fmt: Any, scorers: dict[str, StepScorer], samples: Samples, cfg: ReportConfig,
    powers: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every verifier's AUCs and best-of-N selections. A verifier with a fitted vote power
    (``powers``, from its calibration) gets its weighted rows twice: the plain sum of scores and
    the vote the worker counts (``weighted k=K``)."""
    powers = powers or {}
    qs = arith.questions("test", cfg.prm_questions, seed=cfg.seed + 1)
    # fp32: on a CPU without avx512_bf16 (this one) bf16 matmuls are emulated, several times slower
    roll = ModelRollouts(model, tokenizer, fmt, temperature=cfg.temperature, dtype=torch.float32)
    sols, counts = mc_label(qs, roll, samples=cfg.prm_samples, rollouts_per_step=cfg.prm_rollouts, seed=cfg.seed + 2)
    y = torch.tensor([lab for t in sols for lab in t.labels])
    y_exact = torch.tensor([lab for t in sols for lab in arith.step_labels(t.steps, t.gold)])
    last = torch.tensor([i == len(t.labels) - 1 for t in sols for i in range(len(t.labels))])
    budgets = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= len(samples.texts[0])]
    answers = [[_answer(t) for t in row] for row in samples.texts]
    selection: dict[str, dict[int, float]] = {
        "majority": {n: select_accuracy(samples, answers, None, "majority", n) for n in budgets},
        "oracle": {n: sum(any(c[:n]) for c in samples.correct) / len(samples.questions) for n in budgets},
    }
    verifiers: dict[str, Any] = {}
    for name, scorer in scorers.items():
        s = torch.tensor([x for row in scorer(sols) for x in row])
        per_sample = sample_step_scores(samples, scorer)
        within: dict[str, float] = {}
        for agg in ("last", "min"):
            folded = [[_fold(st, agg) for st in row] for row in per_sample]
            within[agg] = within_question_auc(folded, samples.correct, per_sample)
            for mode in ("weighted", "best"):
                selection[f"{name} {mode} ({agg})"] = {n: select_accuracy(samples, answers, folded, mode, n) for n in budgets}
            k = powers.get(name, 1.0)
            if k != 1.0:
                selection[f"{name} weighted k={k:g} ({agg})"] = {
                    n: select_accuracy(samples, answers, folded, "weighted", n, k) for n in budgets}
        verifiers[name] = {
            "vote_power": powers.get(name, 1.0),
            "auc_steps": auc(s, y), "auc_non_final_steps": auc(s[~last], y[~last]),
            "auc_final_step": auc(s[last], y[last]),
            "bce": float(torch.nn.functional.binary_cross_entropy(s.clamp(1e-6, 1 - 1e-6), y)),
            "auc_exact_steps": auc(s[~last], y_exact[~last]),
            "within_question_auc": within,
        }
    top = budgets[-1]
    margins = {k: v[top] - selection["majority"][top] for k, v in selection.items() if "weighted" in k}
    noise = {f"held-out ({cfg.prm_rollouts} rollouts per step)": label_noise(sols)}
    train_labels = cfg.policy.parent / "prm_labels.jsonl"
    if train_labels.exists():  # the paper's recipe's training labels
        from ponder.training.mc_labels import load_labels

        rollouts = _read(cfg.value_head.with_suffix(".json")).get("recipe", {}).get("rollouts", "?")
        noise[f"training ({rollouts} rollouts per step)"] = label_noise(load_labels(train_labels)["train"])
    return {
        "mc_counts": counts, "labelled_steps": int(y.numel()), "verifiers": verifiers, "selection": selection,
        "budgets": budgets, "weighted_minus_majority_at_max": margins, "label_noise": noise,
    }



def _has_ops(qs: Sequence[Any], ops: int) -> Callable[[int], bool]:
    return lambda i: bool(qs[i].knobs.n_ops == ops)


def _in_third(third: dict[int, str], name: str) -> Callable[[int], bool]:
    return lambda i: third[i] == name


def search_section(samples: Samples, rates: list[float], cfg: ReportConfig) -> dict[str, Any]:
    """Beam search (M = 4) against weighted best-of-N (the default verifier of the built-in
    model, through the engine and the real search loop) on the pool's first questions, overall,
    by number of operations and by thirds of the questions' pass rate (from the pool)."""
    from ponder.evaluation.evaluate import Item, evaluate
    from ponder.training.revise import builtin_name
    from ponder.workers.runtime import build_policy, build_verifier

    policy = build_policy(str(cfg.policy), "engine")
    # the built-in policy's directory is the built-in model, with its default verifier
    verifier = build_verifier("auto", policy, builtin_name(cfg.policy))
    qs = samples.questions[: cfg.search_questions]
    items = [Item(q.question, q.answer) for q in qs]
    results = evaluate(
        policy, verifier, items, ["best_of_n", "beam"], list(cfg.search_budgets), seed=cfg.seed, concurrency=16,
        max_rows=256, progress=True, temperature=cfg.temperature, selection="weighted",
    )
    order = sorted(range(len(qs)), key=lambda i: rates[i])
    third = {i: ("hard", "middle", "easy")[min(2, 3 * k // len(qs))] for k, i in enumerate(order)}
    groups: dict[str, Callable[[int], bool]] = {"all": lambda i: True}
    for ops in sorted({q.knobs.n_ops for q in qs}):
        groups[f"{ops} ops"] = _has_ops(qs, ops)
    for name in ("easy", "middle", "hard"):
        groups[f"{name} third"] = _in_third(third, name)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        key = f"{r.strategy} N={r.budget}"
        ok = {a["index"]: bool(a.get("correct")) for a in r.answers}
        table[key] = {
            g: {"accuracy": sum(ok[i] for i in range(len(qs)) if f(i)) / max(1, sum(1 for i in range(len(qs)) if f(i))),
                "questions": float(sum(1 for i in range(len(qs)) if f(i)))}
            for g, f in groups.items()
        }
        table[key]["all"] |= {"generations": r.generations, "flops": r.flops, "failed": float(r.failed), "wall_s": r.wall_s}
    return {"verifier": getattr(verifier, "name", "none"), "vote_power": getattr(verifier, "vote_power", 1.0), "questions": len(qs), "budgets": list(cfg.search_budgets),
            "groups": list(groups), "table": table}


def revise_section(cfg: ReportConfig, policy_rates: dict[str, float]) -> dict[str, Any]:
    """Revision chains on test questions: the reviser's own (every attempt the reviser's), and
    the same chains as a worker runs them (:func:`service_chain`)."""
    from ponder.training.revise import loop_chains
    from ponder.workers.models import resolve

    fmt = resolve(str(cfg.reviser)).fmt
    qs = arith.questions("test", cfg.revise_questions, seed=cfg.seed)
    chains = [(q, c) for q in qs for c in range(cfg.chains)]
    if fmt.reads_scores:
        # a reviser that reads the verifier's scores: only the search loop computes them
        own = loop_chains(cfg.reviser, cfg.reviser, qs, cfg.chains, cfg.revise_steps, seed=cfg.seed,
                          temperature=cfg.temperature, verifier=cfg.reviser_verifier)
        correct = [[a.correct for a in c] for c in own]
        attempts = [[a.solution for a in c] for c in own]
    else:
        model, tokenizer, fmt = load_checkpoint(cfg.reviser)
        attempts, correct = [[] for _ in chains], [[] for _ in chains]
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
        "reads_scores": fmt.reads_scores, "verifier": cfg.reviser_verifier if fmt.reads_scores else "none",
        "correct_turned_wrong": turned / max(1, was_right), "wrong_turned_correct": fixed / max(1, was_wrong),
        "last_attempt_accuracy": last_right, "chain_majority_accuracy": maj / len(chains),
        "any_attempt_correct": any_right,
        "policy_pass_at_1_same_questions": sum(policy_rates.get(q.question, 0.0) for q in qs) / len(qs),
        "service_chain": service_chain(cfg, qs, fmt.reads_scores),
    }


def service_chain(cfg: ReportConfig, qs: Sequence[arith.Question], scored: bool) -> dict[str, Any]:
    """The same chains as the revision strategy runs them on a worker (the search loop, through
    the engine): there a prompt without earlier attempts (a chain's first attempt) goes to the
    policy and only revision prompts go to the reviser. ``cfg.chains`` chains of
    ``cfg.revise_steps`` attempts per question. The policy's default verifier scores the
    attempts when the reviser reads scores; otherwise none runs (it would change which answer a
    run selects, not what a chain's attempts are)."""
    from ponder.training.revise import chain_pass_at_1, loop_chains

    t = time.time()
    chains = loop_chains(cfg.policy, cfg.reviser, qs, cfg.chains, cfg.revise_steps, seed=cfg.seed,
                         temperature=cfg.temperature, verifier="auto" if scored else "none")
    by_step = chain_pass_at_1(chains)
    log.info("service chain: pass@1 by attempt %s", " ".join(f"{v:.3f}" for v in by_step))
    return {"pass_at_1_by_step": by_step, "verifier": "auto" if scored else "none", "wall_s": time.time() - t}


def _answer(text: str) -> str | None:
    steps = cut_steps(text)
    return extract_answer(steps[-1]) if steps else None


SECTIONS = ("policy", "prm", "search", "reviser")
RERUNNABLE = ("reviser",)  # sections that can run alone, the others kept from the last report
# the ReportConfig fields each section reads (every section also reads the policy's)
SECTION_FIELDS = {
    "policy": ("policy", "questions", "samples", "temperature", "seed"),
    "prm": ("value_head", "prm_model", "value_head_exact", "prm_exact", "confidence", "judge", "likelihood",
            "prm_questions", "prm_samples", "prm_rollouts"),
    "search": ("search_questions", "search_budgets", "judge", "likelihood"),
    "reviser": ("reviser", "reviser_verifier", "revise_questions", "chains", "revise_steps"),
}


def _from_json(result: dict[str, Any]) -> dict[str, Any]:
    """A report read back from quality.json as :func:`run` returned it: the best-of-N curves
    keyed by N as integers again (JSON wrote them as strings)."""
    sel = result["prm"]["selection"]
    result["prm"]["selection"] = {mode: {int(n): acc for n, acc in curve.items()} for mode, curve in sel.items()}
    return result


def load_result(cfg: ReportConfig, field: str) -> dict[str, Any]:
    """The last report, from ``docs/quality.json`` (INVALID_ARGUMENT on ``field`` when there is none)."""
    path = cfg.docs / "quality.json"
    if not path.exists():
        raise InvalidArgument(field, f"{path} does not exist: run the whole report first")
    return _from_json(json.loads(path.read_text()))


def previous_result(cfg: ReportConfig, only: Sequence[str]) -> dict[str, Any]:
    """The report in ``docs/quality.json`` whose sections outside ``only`` are kept, checked to
    have been made with this configuration's settings for them (and for the policy section)."""
    if not only or any(s not in RERUNNABLE for s in only):
        raise InvalidArgument("only", f"the sections that rerun alone are {', '.join(RERUNNABLE)} (the policy, PRM "
                                      f"and search sections share one pool of samples); got {', '.join(only) or 'none'}")
    prev = load_result(cfg, "only")
    mine = json.loads(json.dumps(asdict(cfg), default=str))
    kept = [s for s in SECTIONS if s not in only]
    fields = {f for s in ("policy", *kept) for f in SECTION_FIELDS[s]}
    differ = sorted(f for f in fields if prev.get("config", {}).get(f) != mine[f])
    if differ:
        raise InvalidArgument("only", f"{cfg.docs / 'quality.json'} was made with other {', '.join(differ)} than asked for now; "
                                      f"the sections it keeps ({', '.join(kept)}) depend on them: run the whole report")
    return prev


def vote_powers(cfg: ReportConfig) -> dict[str, float]:
    """The vote power saved in each calibrated verifier's calibration (``ponder train vote``),
    by the verifier's name in the report."""
    from ponder.workers.prm.confidence import Calibration
    from ponder.workers.prm.likelihood import LikelihoodCalibration

    out = {}
    if cfg.confidence is not None and cfg.confidence.exists():
        out["confidence"] = Calibration.load(cfg.confidence).vote_power
    if cfg.judge is not None and cfg.likelihood is not None and cfg.likelihood.exists():
        out[f"likelihood ({cfg.judge})"] = LikelihoodCalibration.load(cfg.likelihood).vote_power
    return out


def run(cfg: ReportConfig, only: Sequence[str] = ()) -> dict[str, Any]:
    """The whole report, or (``only``) the named sections with the rest kept from the last one."""
    if only:
        return run_reviser_section(cfg, previous_result(cfg, only))
    torch.set_num_threads(cfg.threads)
    timings: dict[str, float] = {}
    t = time.time()
    model, tokenizer, fmt = load_checkpoint(cfg.policy)
    qs = arith.questions("test", cfg.questions, seed=cfg.seed)
    samples = sample_solutions(model, tokenizer, fmt, qs, cfg.samples, temperature=cfg.temperature, seed=cfg.seed)
    pol = policy_section(samples)
    timings["policy"] = time.time() - t
    t = time.time()
    scorers = {"value head (MC)": value_head_scorer(model, tokenizer, fmt, ValueHead.load(cfg.value_head))}
    if cfg.prm_model is not None and (cfg.prm_model / "config.json").exists():
        scorers["PRM model (MC)"] = prm_model_scorer(cfg.prm_model)
    if cfg.value_head_exact is not None and cfg.value_head_exact.exists():
        scorers["value head (exact)"] = value_head_scorer(model, tokenizer, fmt, ValueHead.load(cfg.value_head_exact))
    if cfg.prm_exact is not None and (cfg.prm_exact / "config.json").exists():
        scorers["PRM model (exact)"] = prm_model_scorer(cfg.prm_exact)
    scorers["confidence"] = confidence_scorer(
        model, tokenizer, fmt, cfg.confidence if cfg.confidence is not None and cfg.confidence.exists() else None
    )
    if cfg.judge is not None:
        from ponder.workers.models import BUILTIN, load_hf_model, resolve

        if cfg.judge not in BUILTIN or (BUILTIN[cfg.judge] / "config.json").exists():
            scorers[f"likelihood ({cfg.judge})"] = likelihood_scorer(
                model, tokenizer, fmt, load_hf_model(resolve(cfg.judge)),
                cfg.likelihood if cfg.likelihood is not None and cfg.likelihood.exists() else None)
    prm = prm_section(model, tokenizer, fmt, scorers, samples, cfg, vote_powers(cfg))
    timings["prm"] = time.time() - t
    t = time.time()
    search = search_section(samples, pol["rates"], cfg) if cfg.search_questions > 0 else {}
    timings["search"] = time.time() - t
    t = time.time()
    rates = {q.question: r for q, r in zip(qs, pol["rates"])}
    rev = revise_section(cfg, rates)
    timings["reviser"] = time.time() - t
    result = {"config": asdict(cfg), "policy": pol, "prm": prm, "search": search, "reviser": rev, "timings": timings}
    write_doc(result, cfg.docs, cfg.policy.parent)
    return result


def run_reviser_section(cfg: ReportConfig, prev: dict[str, Any]) -> dict[str, Any]:
    """Rerun the reviser section alone (the only one in :data:`RERUNNABLE`), the rest of ``prev`` kept."""
    torch.set_num_threads(cfg.threads)
    t = time.time()
    qs = arith.questions("test", cfg.questions, seed=cfg.seed)
    rev = revise_section(cfg, {q.question: r for q, r in zip(qs, prev["policy"]["rates"])})
    result = {**prev, "config": asdict(cfg), "reviser": rev,
              "timings": {**prev.get("timings", {}), "reviser": time.time() - t},
              "rerun": sorted({*prev.get("rerun", []), "reviser"})}
    write_doc(result, cfg.docs, cfg.policy.parent)
    return result


def render(cfg: ReportConfig) -> dict[str, Any]:
    """The page written again from ``docs/quality.json``, nothing measured."""
    result = load_result(cfg, "render")
    write_doc(result, cfg.docs, cfg.policy.parent)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    d = ReportConfig()
    p = argparse.ArgumentParser(prog="ponder train report", description=__doc__.splitlines()[0])
    for name in ("policy", "value_head", "reviser", "prm_model", "value_head_exact", "prm_exact", "confidence",
                 "likelihood", "docs"):
        p.add_argument("--" + name.replace("_", "-"), type=Path, default=getattr(d, name))
    p.add_argument("--reviser-verifier", default=d.reviser_verifier,
                   help="the verifier scoring the reviser's own chain when the reviser reads scores")
    p.add_argument("--judge", default=d.judge, help="the likelihood verifier's judge model ('none': leave it out)")
    for name in ("questions", "samples", "prm_questions", "prm_samples", "prm_rollouts", "revise_questions",
                 "chains", "revise_steps", "seed", "threads", "search_questions"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--search-budgets", default=",".join(map(str, d.search_budgets)))
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--only", default="", help="rerun only this section (reviser), keeping the others from "
                   "docs/quality.json (they must have been made with the same settings)")
    p.add_argument("--render", action="store_true", help="measure nothing: write the page again from docs/quality.json "
                   "and the artifacts' training summaries (after a model was retrained, before its section reruns)")
    a = p.parse_args(argv)
    a.search_budgets = tuple(int(x) for x in a.search_budgets.split(",") if x.strip())
    a.judge = None if a.judge in ("", "none") else a.judge
    cfg = ReportConfig(**{k: getattr(a, k) for k in d.__dataclass_fields__})
    try:
        if a.render and a.only:
            raise InvalidArgument("render", "--render measures nothing; it cannot be combined with --only")
        result = render(cfg) if a.render else run(cfg, tuple(s for s in a.only.split(",") if s.strip()))
    except InvalidArgument as e:
        print(f"ponder train report: INVALID_ARGUMENT: {e}", file=sys.stderr)
        return 2
    summary = {
        "pass_at_1": result["policy"]["pass_at_1"],
        "share_between": result["policy"]["share_between"],
        "prm_auc_steps": {k: v["auc_steps"] for k, v in result["prm"]["verifiers"].items()},
        "weighted_minus_majority": result["prm"]["weighted_minus_majority_at_max"],
        "revision_pass_at_1": result["reviser"]["pass_at_1_by_step"],
        "correct_turned_wrong": result["reviser"]["correct_turned_wrong"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
