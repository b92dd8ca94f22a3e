"""Accuracy against compute, per strategy and budget, on a JSONL dataset (``ponder eval``).

Reads GSM8K records (``question``, ``answer`` ending in ``#### N``) or MATH-500 records
(``problem``, ``answer``), runs each question under every (strategy, budget) through one
:class:`SearchLoop`, grades the selected answer with math-verify and reports, per
(strategy, budget): accuracy, mean generations, tokens and FLOPs per question, and wall time.

The (strategy, budget) groups run one after another so each group's wall time is its own; the
questions of a group run concurrently (``concurrency`` at a time) and share every policy call.

    python -m ponder.workers.evaluate --dataset ../shared/datasets/gsm8k_test.jsonl \\
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
from ponder.proto.config import STRATEGIES, SolveConfig
from ponder.proto.errors import InvalidArgument, PonderError
from ponder.workers.answers import extract_answer, is_correct
from ponder.workers.loop import SearchLoop
from ponder.workers.policy import Policy
from ponder.workers.verifier import Verifier


@dataclass(frozen=True)
class Item:
    question: str
    gold: str


@dataclass
class Result:
    """One (strategy, budget) group. Means are per question."""

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
    answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        return d


def load_dataset(path: str | Path, limit: int | None = None) -> list[Item]:
    """Questions and gold answers from a GSM8K- or MATH-500-style JSONL file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidArgument("dataset", f"{p} does not exist")
    items: list[Item] = []
    with p.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            question = rec.get("question") or rec.get("problem")
            answer = rec.get("answer")
            if not question or answer is None:
                raise InvalidArgument("dataset", f"{p}:{line_no} lacks question/problem or answer")
            answer = str(answer)
            gold = extract_answer(answer) if "####" in answer else answer.strip()
            items.append(Item(question, gold or answer.strip()))
            if limit is not None and len(items) >= limit:
                break
    return items


def evaluate(
    policy: Policy,
    verifier: Verifier | None,
    dataset_path: str | Path,
    strategies: Sequence[str],
    budgets: Sequence[int],
    limit: int | None = 20,
    *,
    seed: int = 0,
    concurrency: int = 8,
    max_rows: int = 64,
    progress: bool = True,
    on_result: Callable[[list[Result]], None] | None = None,
    **options: Any,
) -> list[Result]:
    """Run every question under every (strategy, budget); ``options`` go into SolveConfig
    (temperature, max_steps, max_step_tokens, beam_width, lookahead, ...).

    At most ``concurrency`` questions are in flight, and fewer when they would hold more than
    about ``max_rows`` sequences at once (see :func:`rows_per_question`), which bounds the KV
    memory. ``on_result`` is called with the results so far after every group."""
    from tqdm import tqdm

    for s in strategies:
        if s not in STRATEGIES:
            raise InvalidArgument("strategies", f"unknown strategy {s!r}")
    items = load_dataset(dataset_path, limit)
    loop = SearchLoop(policy, verifier)
    results: list[Result] = []
    bar = tqdm(total=len(items) * len(strategies) * len(budgets), disable=not progress, unit="q", file=sys.stderr)
    try:
        for strategy in strategies:
            for budget in budgets:
                bar.set_description(f"{strategy} N={budget}")
                in_flight = max(1, min(concurrency, max_rows // rows_per_question(strategy, budget, options)))
                results.append(_run_group(loop, items, strategy, budget, seed, in_flight, options, bar))
                if on_result is not None:
                    on_result(results)
    finally:
        bar.close()
    return results


def rows_per_question(strategy: str, budget: int, options: dict[str, Any]) -> int:
    """Sequences one question keeps in flight: the budget for the parallel strategies, one for
    a revision chain, one per chain for hybrid."""
    from ponder.workers.search.revision import DEFAULT_SEQUENTIAL_RATIO, split_budget

    if strategy == "revision":
        return 1
    if strategy == "hybrid":
        ratio = options.get("sequential_ratio")
        return len(split_budget(max(1, budget), DEFAULT_SEQUENTIAL_RATIO if ratio is None else ratio))
    return max(1, budget)


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
    finals: dict[str, pb.SolveEvent] = {}
    loop.sink = lambda job_id, events: finals.update(
        {job_id: e for e in events if e.WhichOneof("kind") in ("final", "error")}
    )
    todo = list(enumerate(items))
    live: set[str] = set()
    start = time.perf_counter()
    while todo or live:
        while todo and len(live) < max(1, concurrency):
            i, item = todo.pop(0)
            job = f"{strategy}-{budget}-{i}"
            cfg = SolveConfig(question=item.question, strategy=strategy, generations=budget, seed=seed + i, **options)
            try:
                loop.submit(job, cfg.validate())
            except PonderError as exc:  # e.g. beam search on a worker without a verifier
                finals[job] = pb.SolveEvent(job_id=job, error=pb.Error(code=exc.code, message=exc.message))
                bar.update(1)
                continue
            live.add(job)
        loop.tick()
        for job in [j for j in live if j in finals]:
            live.discard(job)
            bar.update(1)
    res.wall_s = time.perf_counter() - start
    for i, item in enumerate(items):
        ev = finals[f"{strategy}-{budget}-{i}"]
        res.questions += 1
        if ev.WhichOneof("kind") == "error":
            res.failed += 1
            res.answers.append({"index": i, "gold": item.gold, "error": ev.error.message})
            continue
        fin = ev.final
        ok = is_correct(fin.answer or None, item.gold)
        res.correct += int(ok)
        u = fin.usage
        res.generations += u.generations
        res.tokens += u.prompt_tokens + u.decode_tokens + u.prm_tokens
        res.decode_tokens += u.decode_tokens
        res.prm_tokens += u.prm_tokens
        res.flops += u.flops
        res.flops_unshared += u.flops_unshared
        res.answers.append({"index": i, "gold": item.gold, "answer": fin.answer, "correct": ok})
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
    p = argparse.ArgumentParser(prog="ponder eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="JSONL with question/answer (GSM8K) or problem/answer (MATH)")
    p.add_argument("--model", default="smollm2", help="smollm2, a .gguf file or an HF model directory")
    p.add_argument("--backend", default="auto", choices=("auto", "engine", "hf"))
    p.add_argument("--verifier", default="random",
                   help="value-head .safetensors, PRM directory, outcome:DIR, random[:SEED] or none")
    p.add_argument("--strategies", default="best_of_n,beam,lookahead,dvts,revision,hybrid")
    p.add_argument("--budgets", default="4,16")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8, help="questions in flight per group")
    p.add_argument("--max-rows", type=int, default=64, help="sequences in flight (bounds KV memory)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-step-tokens", type=int, default=None)
    p.add_argument("--beam-width", type=int, default=None)
    p.add_argument("--lookahead", type=int, default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: auto, as for a worker)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ponder.workers.runtime import build_policy, build_verifier, set_threads

    policy = build_policy(args.model, args.backend)
    threads = set_threads(args.threads, policy)
    verifier = build_verifier("" if args.verifier == "none" else args.verifier, policy)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    options = {
        k: v
        for k, v in dict(
            temperature=args.temperature, max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
            beam_width=args.beam_width, lookahead=args.lookahead,
        ).items()
        if v is not None
    }
    start = time.perf_counter()
    header = {
        "model": policy.name,
        "backend": type(policy).__name__,
        "verifier": getattr(verifier, "name", "none"),
        "dataset": str(args.dataset),
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
        policy, verifier, args.dataset, strategies, budgets, args.limit, seed=args.seed,
        concurrency=args.concurrency, max_rows=args.max_rows, progress=not args.no_progress,
        on_result=save, **options,
    )
    print(format_markdown([r.as_dict() for r in results]) if args.markdown else format_table(results))
    summary = save(results)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"} | {
        "table": [{k: v for k, v in r.as_dict().items() if k != "answers"} for r in results]
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
