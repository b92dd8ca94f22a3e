"""Accuracy against compute, per strategy and budget, on a dataset (``ponder eval``).

Reads GSM8K records (``question``, ``answer`` ending in ``#### N``) or MATH-500 records
(``problem``, ``answer``) from a JSONL file, or questions of the built-in arithmetic task
(``arith:test[:N[:SEED]]``), runs each question under every (strategy, budget) through one
:class:`SearchLoop`, grades the selected answer with math-verify and reports, per
(strategy, budget): accuracy, mean generations, tokens and FLOPs per question, and wall time.

The (strategy, budget) groups run one after another so each group's wall time is its own; the
questions of a group run concurrently (``concurrency`` at a time) and share every policy call.
Every search option of :class:`SolveConfig` is a flag, named as for ``ponder ask``.

    ponder eval --model arith --dataset arith:test --strategies best_of_n,beam --budgets 4,16
    ponder eval --model smollm2 --dataset GSM8K/gsm8k_test.jsonl --verifier random \\
        --strategies best_of_n,beam --budgets 4,16 --limit 20 --out eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ponder.proto import pb
from ponder.proto.config import STRATEGIES, VERIFIER_HELP, SolveConfig, add_option_flags, option_fields
from ponder.proto.errors import InvalidArgument, PonderError
from ponder.workers.answers import extract_answer, is_correct
from ponder.workers.loop import SearchLoop
from ponder.workers.policy import Policy
from ponder.workers.search.plan import PlanTable
from ponder.workers.search.registry import STRATEGY_CLASSES
from ponder.workers.verifier import Verifier

# SolveConfig fields that are not search options here: the question comes from the dataset, the
# strategy and budget from --strategies/--budgets, the seed from --seed (plus the question's
# index), and the rest is request bookkeeping. Every other field is a flag (SEARCH_OPTIONS).
NOT_SEARCH_OPTIONS = frozenset({"question", "strategy", "generations", "seed", "request_id", "priority", "model"})
SEARCH_OPTIONS: tuple[str, ...] = tuple(f.name for f in option_fields(NOT_SEARCH_OPTIONS))
ARITH_DEFAULT_N = 200


@dataclass(frozen=True)
class Item:
    question: str
    gold: str


@dataclass
class Result:
    """One (strategy, budget) group. Means are per question that did not fail."""

    strategy: str
    budget: int
    questions: int = 0
    correct: int = 0
    failed: int = 0  # jobs that ended in an error event
    in_flight: int = 0  # questions run concurrently
    generations: float = 0.0
    tokens: float = 0.0
    decode_tokens: float = 0.0
    prm_tokens: float = 0.0
    flops: float = 0.0
    flops_unshared: float = 0.0
    wall_s: float = 0.0
    # Per question, in dataset order: index, question, gold, then either error, or answer,
    # correct, stop_reason, usage and candidates (answer, score, correct, attempt, node, solution).
    answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    @property
    def errors(self) -> list[str]:
        """The distinct error messages of the failed questions, first seen first."""
        return list(dict.fromkeys(a["error"] for a in self.answers if "error" in a))

    def pass_at_1_by_attempt(self) -> list[float]:
        """For chains of revisions (``revision``, ``hybrid``, ``auto`` where it revises): the
        share of attempt k's candidates that are right, k = 1, 2, ... (attempt 1 is a chain's
        first, unrevised attempt). Empty when no candidate was a revision."""
        right: dict[int, list[bool]] = {}
        for a in self.answers:
            for c in a.get("candidates", ()):
                right.setdefault(int(c.get("attempt") or 0), []).append(bool(c.get("correct")))
        if max(right, default=0) == 0:
            return []
        return [sum(right.get(k, ())) / len(right[k]) if right.get(k) else 0.0 for k in range(max(right) + 1)]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        d["pass_at_1_by_attempt"] = self.pass_at_1_by_attempt()
        return d


def load_dataset(spec: str | Path, limit: int | None = None) -> list[Item]:
    """Questions and gold answers from a GSM8K- or MATH-500-style JSONL file, or from the
    built-in arithmetic task: ``arith:SPLIT[:N[:SEED]]`` (N defaults to 200, SEED to 0)."""
    text = str(spec)
    if text.startswith("arith:") and not Path(text).expanduser().is_file():
        return _arith_items(text, limit)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise InvalidArgument("dataset", f"{p} does not exist (a JSONL file, or arith:test[:N])")
    items: list[Item] = []
    with p.open() as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument("dataset", f"{p}:{line_no} is not JSON ({exc.msg})") from None
            question = rec.get("question") or rec.get("problem") if isinstance(rec, dict) else None
            answer = rec.get("answer") if isinstance(rec, dict) else None
            if not question or answer is None:
                raise InvalidArgument("dataset", f"{p}:{line_no} lacks question/problem or answer")
            answer = str(answer)
            gold = extract_answer(answer) if "####" in answer else answer.strip()
            items.append(Item(question, gold or answer.strip()))
    return items


def _arith_items(spec: str, limit: int | None) -> list[Item]:
    from ponder.tasks import arith

    parts = spec.split(":")[1:]
    split = parts[0] if parts else ""
    if split not in arith.SPLITS or len(parts) > 3:
        raise InvalidArgument("dataset", f"{spec!r}: expected arith:SPLIT[:N[:SEED]] with SPLIT one of {', '.join(arith.SPLITS)}")
    try:
        n = int(parts[1]) if len(parts) > 1 and parts[1] else ARITH_DEFAULT_N
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise InvalidArgument("dataset", f"{spec!r}: N and SEED must be integers") from None
    if n < 1 or seed < 0:
        raise InvalidArgument("dataset", f"{spec!r}: N must be >= 1 and SEED >= 0")
    if limit is not None:
        n = min(n, limit)
    return [Item(q.question, q.answer) for q in arith.questions(split, n, seed=seed)]


def check_options(strategies: Sequence[str], budgets: Sequence[int], options: dict[str, Any]) -> None:
    """Raise :class:`InvalidArgument` naming the first bad field before anything runs: every
    (strategy, budget) must make a valid SolveConfig with these options."""
    if not strategies:
        raise InvalidArgument("strategies", "name at least one strategy")
    if not budgets:
        raise InvalidArgument("budgets", "name at least one budget")
    unknown = sorted(set(options) - set(SEARCH_OPTIONS))
    if unknown:
        raise InvalidArgument(unknown[0], f"is not a search option ({', '.join(SEARCH_OPTIONS)})")
    for s in strategies:
        if s not in STRATEGIES or s not in STRATEGY_CLASSES:
            known = ", ".join(n for n in STRATEGIES if n in STRATEGY_CLASSES)
            raise InvalidArgument("strategies", f"unknown strategy {s!r}; expected one of {known}")
    for s in strategies:
        for b in budgets:
            SolveConfig(question="?", strategy=s, generations=b, **options).validate()


def evaluate(
    policy: Policy,
    verifier: Verifier | None,
    dataset: str | Path | Sequence[Item],
    strategies: Sequence[str],
    budgets: Sequence[int],
    limit: int | None = None,
    *,
    seed: int = 0,
    concurrency: int = 8,
    max_rows: int = 64,
    progress: bool = True,
    on_result: Callable[[list[Result]], object] | None = None,
    reviser: Policy | None = None,
    plan: PlanTable | None = None,
    **options: Any,
) -> list[Result]:
    """Run every question under every (strategy, budget); ``options`` go into SolveConfig
    (any of :data:`SEARCH_OPTIONS`: temperature, max_steps, beam_width, selection, ...).
    ``dataset`` is a JSONL path, an ``arith:…`` spec or a list of :class:`Item`; ``limit``
    keeps its first questions (None: all of them).

    At most ``concurrency`` questions are in flight, and fewer when they would hold more than
    about ``max_rows`` sequences at once (see :func:`rows_per_question`), which bounds the KV
    memory. ``on_result`` is called with the results so far after every group."""
    from tqdm import tqdm

    check_options(strategies, budgets, options)
    if isinstance(dataset, (str, Path)):
        items = load_dataset(dataset, limit)
    else:
        items = list(dataset)[:limit] if limit is not None else list(dataset)
    loop = SearchLoop(policy, verifier, reviser=reviser, plan=plan)
    results: list[Result] = []
    bar = tqdm(total=len(items) * len(strategies) * len(budgets), disable=not progress, unit="q",
               file=sys.stderr, dynamic_ncols=True)
    try:
        for strategy in strategies:
            for budget in budgets:
                bar.set_description(f"{strategy} N={budget}")
                bar.set_postfix_str("")
                in_flight = max(1, min(concurrency, max_rows // rows_per_question(strategy, budget, options, loop.plan)))
                results.append(_run_group(loop, items, strategy, budget, seed, in_flight, options, bar))
                if on_result is not None:
                    on_result(results)
    finally:
        bar.close()
    return results


def rows_per_question(strategy: str, budget: int, options: dict[str, Any], plan: PlanTable | None = None) -> int:
    """Sequences one question keeps in flight: the budget for the parallel strategies, one for
    a revision chain, one per chain for hybrid, a wave for adaptive best-of-N; for auto, the
    most any plan cell for this budget keeps."""
    from ponder.workers.search.plan import DEFAULT_PLAN
    from ponder.workers.search.revision import DEFAULT_SEQUENTIAL_RATIO, split_budget

    plan = plan or DEFAULT_PLAN
    adaptive = SolveConfig(question="?", strategy=strategy, generations=budget,
                           budget_mode=options.get("budget_mode")).adaptive
    if strategy == "auto":
        cells = {plan.lookup(b, budget) for b in range(6)}
        wave = plan.controller.wave if adaptive else budget
        rows = [max(plan.pilot, wave)]
        rows += [rows_per_question(c.strategy, budget, options | c.overrides()) for c in cells if c.strategy != "best_of_n"]
        return max(1, min(budget, max(rows)))
    if strategy == "best_of_n" and adaptive:
        return max(1, min(budget, plan.controller.wave))

    if strategy == "revision":
        return 1
    if strategy == "hybrid":
        ratio = options.get("sequential_ratio")
        return len(split_budget(max(1, budget), DEFAULT_SEQUENTIAL_RATIO if ratio is None else ratio))
    return max(1, budget)


def _usage(u: Any) -> dict[str, Any]:
    return {f.name: getattr(u, f.name) for f in u.DESCRIPTOR.fields}


class _Grader:
    """is_correct against one gold, memoised: the candidates of a question repeat answers."""

    def __init__(self, gold: str) -> None:
        self.gold = gold
        self.seen: dict[str, bool] = {}

    def __call__(self, answer: str | None) -> bool:
        if not answer:
            return False
        if answer not in self.seen:
            self.seen[answer] = is_correct(answer, self.gold)
        return self.seen[answer]


def _record(
    index: int, item: Item, end: pb.SolveEvent, candidates: list[pb.Candidate], decisions: Sequence[pb.Decision] = ()
) -> dict[str, Any]:
    """What the ``--out`` file keeps of one question: enough to recompute selections offline."""
    rec: dict[str, Any] = {"index": index, "question": item.question, "gold": item.gold}
    if end.WhichOneof("kind") == "error":
        rec["error"] = f"{end.error.code}: {end.error.message}" if end.error.code else end.error.message
        return rec
    grade = _Grader(item.gold)
    fin = end.final
    rec |= {
        "answer": fin.answer,
        "correct": grade(fin.answer or None),
        "stop_reason": fin.stop_reason,
        "nominal_generations": fin.nominal_generations,
        "low_confidence": fin.low_confidence,
        "difficulty_bin": fin.difficulty_bin,
        "decisions": [{"kind": d.kind, "candidates": d.candidates, "spent": d.spent, "vote_share": round(d.vote_share, 4),
                       "mean_score": round(d.mean_score, 4), "plan": d.plan} for d in decisions],
        "usage": _usage(fin.usage),
        "candidates": [
            {
                "answer": c.answer or None,
                "score": c.score if c.HasField("score") else None,
                "correct": grade(c.answer or None),
                "attempt": c.attempt_index,
                "node": c.node_id,
                "solution": c.solution,
            }
            for c in candidates
        ],
    }
    return rec


def _run_group(
    loop: SearchLoop,
    items: list[Item],
    strategy: str,
    budget: int,
    seed: int,
    concurrency: int,
    options: dict[str, Any],
    bar: Any,
) -> Result:
    res = Result(strategy, budget, in_flight=concurrency)
    job_of = {f"{strategy}-{budget}-{i}": i for i in range(len(items))}
    ends: dict[str, pb.SolveEvent] = {}
    cands: dict[str, list[pb.Candidate]] = {job: [] for job in job_of}
    decisions: dict[str, list[pb.Decision]] = {job: [] for job in job_of}

    def sink(job_id: str, events: list[pb.SolveEvent]) -> None:
        for e in events:
            kind = e.WhichOneof("kind")
            if kind == "candidate" and job_id in cands:
                cands[job_id].append(e.candidate)
            elif kind == "decision" and job_id in decisions:
                decisions[job_id].append(e.decision)
            elif kind in ("final", "error"):
                ends[job_id] = e

    loop.set_sink(sink)
    records: dict[int, dict[str, Any]] = {}
    done = correct = failed = 0

    def finish(job: str) -> None:
        nonlocal done, correct, failed
        i = job_of[job]
        records[i] = rec = _record(i, items[i], ends[job], cands.pop(job), decisions.pop(job))
        done += 1
        correct += int(bool(rec.get("correct")))
        failed += int("error" in rec)
        bar.set_postfix_str(f"acc {correct}/{done} = {correct / done:.0%}" + (f", {failed} failed" if failed else ""))
        bar.update(1)

    todo = list(job_of.items())
    live: set[str] = set()
    timeout_s = options.get("timeout_s") or 0.0
    start = time.perf_counter()
    while todo or live:
        while todo and len(live) < max(1, concurrency):
            job, i = todo.pop(0)
            cfg = SolveConfig(question=items[i].question, strategy=strategy, generations=budget, seed=seed + i, **options)
            deadline = time.time() + timeout_s if timeout_s else None
            try:
                loop.submit(job, cfg.validate(), deadline=deadline)
            except PonderError as exc:  # e.g. beam search on a worker without a verifier
                ends[job] = pb.SolveEvent(job_id=job, error=pb.Error(code=exc.code, message=exc.message))
                finish(job)
                continue
            live.add(job)
        loop.tick()
        for job in [j for j in live if j in ends]:
            live.discard(job)
            finish(job)
    res.wall_s = time.perf_counter() - start
    for i in range(len(items)):
        rec = records[i]
        res.answers.append(rec)
        res.questions += 1
        if "error" in rec:
            res.failed += 1
            continue
        res.correct += int(rec["correct"])
        u = rec["usage"]
        res.generations += u["generations"]
        res.tokens += u["prompt_tokens"] + u["decode_tokens"] + u["prm_tokens"]
        res.decode_tokens += u["decode_tokens"]
        res.prm_tokens += u["prm_tokens"]
        res.flops += u["flops"]
        res.flops_unshared += u["flops_unshared"]
    n = max(1, res.questions - res.failed)
    for name in ("generations", "tokens", "decode_tokens", "prm_tokens", "flops", "flops_unshared"):
        setattr(res, name, getattr(res, name) / n)
    return res


def format_table(results: list[Result]) -> str:
    head = f"{'strategy':<10} {'N':>4} {'acc':>6} {'gens':>6} {'tokens':>9} {'FLOPs':>10} {'wall s':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.strategy:<10} {r.budget:>4} {r.accuracy:>6.1%} {r.generations:>6.1f} {r.tokens:>9.0f} "
            f"{r.flops:>10.3g} {r.wall_s:>8.1f}" + (f"  ({r.failed} failed)" if r.failed else "")
        )
    return "\n".join(lines)


def format_attempts(results: list[Result]) -> str:
    """Under the table, for each group that revised: pass@1 of attempt 1, 2, ... of its chains."""
    lines = []
    for r in results:
        by = r.pass_at_1_by_attempt()
        if by:
            lines.append(f"{r.strategy} N={r.budget}: pass@1 by attempt " + " ".join(f"{k}:{v:.3f}" for k, v in enumerate(by, 1)))
    return "\n".join(lines)


def format_errors(results: list[Result], per_group: int = 3) -> str:
    """Under the table: the first distinct error messages of every group that had failures."""
    lines = []
    for r in results:
        if not r.failed:
            continue
        errors = r.errors
        lines.append(f"{r.strategy} N={r.budget}: {r.failed} of {r.questions} failed:")
        lines += [f"  {msg}" for msg in errors[:per_group]]
        if len(errors) > per_group:
            lines.append(f"  … and {len(errors) - per_group} other messages (see --out)")
    return "\n".join(lines)


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of result rows (``Result.as_dict()`` or the ``results`` of a saved
    ``--out`` file). ``FLOPs / best_of_n`` compares each row with best-of-N at the same budget."""
    bon = {r["budget"]: r["flops"] for r in rows if r["strategy"] == "best_of_n" and r["flops"]}
    lines = [
        "| strategy | N | accuracy | generations | tokens (prompt+decode+PRM) | decode tokens | FLOPs | FLOPs / best_of_n | FLOPs without sharing | wall s | in flight | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['flops'] / bon[r['budget']]:.2f}" if r["budget"] in bon else "–"
        lines.append(
            f"| {r['strategy']} | {r['budget']} | {r['correct']}/{r['questions']} | {r['generations']:.1f} | "
            f"{r['tokens']:.0f} | {r['decode_tokens']:.0f} | {r['flops']:.3g} | {ratio} | {r['flops_unshared']:.3g} | "
            f"{r['wall_s']:.0f} | {r.get('in_flight', '–')} | {r['failed']} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from ponder.workers.runtime import BACKENDS, DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="ponder eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True,
                   help="JSONL with question/answer (GSM8K) or problem/answer (MATH), or arith:SPLIT[:N[:SEED]] "
                        f"(the built-in task: N questions, default {ARITH_DEFAULT_N}, seed 0)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'arith' (built in, the default), 'smollm2', a .gguf file or an HF model directory")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--verifier", default="auto",
                   help=VERIFIER_HELP)
    p.add_argument("--reviser", default="auto",
                   help="model for revision prompts: 'auto' (the model's own, e.g. arith-reviser), 'none', or a model")
    p.add_argument("--plan", default="auto",
                   help="auto's plan table: 'auto' (the model's plan.json, else the default plan), 'default', or a path")
    p.add_argument("--strategies", default="best_of_n,beam,lookahead,dvts,revision,hybrid")
    p.add_argument("--budgets", default="4,16", help="comma-separated budgets N in generations")
    p.add_argument("--limit", type=int, default=None, help="first N questions only (default: the whole dataset)")
    p.add_argument("--seed", type=int, default=0, help="question i is sampled with seed SEED + i")
    p.add_argument("--concurrency", type=int, default=8, help="questions in flight per group")
    p.add_argument("--max-rows", type=int, default=64, help="sequences in flight (bounds KV memory)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: auto, as for a worker)")
    p.add_argument("--device", default="cpu", help="where the model runs (as for a worker)")
    p.add_argument("--dtype", default="auto", help="compute dtype (as for a worker)")
    p.add_argument("--out", default="",
                   help="write the results as JSON here after every group, with every question's candidates")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_option_flags(p.add_argument_group("search options (SolveConfig fields, as for ponder ask)"), NOT_SEARCH_OPTIONS)
    return p


def _csv(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def _parse_budgets(value: str) -> list[int]:
    try:
        return [int(b) for b in _csv(value)]
    except ValueError:
        raise InvalidArgument("budgets", f"must be comma-separated integers, got {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except PonderError as exc:
        print(f"ponder eval: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from ponder.workers.runtime import (
        build_plan, build_policy, build_reviser, build_verifier, resolve_placement, set_threads,
    )

    strategies = _csv(args.strategies)
    budgets = _parse_budgets(args.budgets)
    options = {name: getattr(args, name) for name in SEARCH_OPTIONS}
    check_options(strategies, budgets, options)  # before any model loads
    device, dtype = resolve_placement(args.device, args.dtype)
    for name in ("limit", "concurrency", "max_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidArgument(name, f"must be >= 1, got {value}")
    items = load_dataset(args.dataset, args.limit)
    if not items:
        raise InvalidArgument("dataset", f"{args.dataset} holds no questions")

    policy = build_policy(args.model, args.backend, device, dtype)
    threads = set_threads(args.threads, policy)
    verifier = build_verifier(args.verifier, policy, args.model)
    plan = build_plan(args.plan, args.model, verifier)
    # revision prompts go to the model's reviser, as on a worker (loaded only when used)
    revising = {"revision", "hybrid"} & set(strategies) or (
        "auto" in strategies and any(c.strategy in ("revision", "hybrid") for row in plan.plans.values() for c in row.values())
    )
    reviser = build_reviser(args.reviser, args.model, args.backend, device, dtype) if revising else None
    start = time.perf_counter()
    header = {
        "model": policy.name,
        "backend": type(policy).__name__,
        "device": policy.device,
        "dtype": policy.dtype,
        "verifier": getattr(verifier, "name", "none") if verifier is not None else "none",
        # weighted votes counted score ** vote_power (the verifier's calibration fits it)
        "vote_power": getattr(verifier, "vote_power", 1.0) if verifier is not None else 1.0,
        "reviser": reviser.name if reviser is not None else "none",
        "plan": plan.summary(),
        "dataset": str(args.dataset),
        "questions": len(items),
        "limit": args.limit,
        "seed": args.seed,
        "threads": threads,
        "options": options,
    }

    def save(results: list[Result]) -> dict[str, Any]:
        summary = header | {"total_wall_s": time.perf_counter() - start, "results": [r.as_dict() for r in results]}
        if args.out:  # after every group, so a long run leaves its finished groups behind
            Path(args.out).write_text(json.dumps(summary, indent=2))
        return summary

    results = evaluate(
        policy, verifier, items, strategies, budgets, seed=args.seed, concurrency=args.concurrency,
        max_rows=args.max_rows, progress=not args.no_progress, on_result=save, reviser=reviser, plan=plan, **options,
    )
    print(format_markdown([r.as_dict() for r in results]) if args.markdown else format_table(results))
    attempts = format_attempts(results)
    if attempts:
        print(attempts)
    errors = format_errors(results)
    if errors:
        print(errors)
    summary = save(results)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"} | {
        "table": [{k: v for k, v in r.as_dict().items() if k != "answers"} for r in results]
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
