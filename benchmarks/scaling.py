"""The paper's experiments on one model (Snell et al., arXiv 2408.03314): accuracy against test-time
compute for every search method, overall and by difficulty, and a verdict on each finding.

    python benchmarks/scaling.py                       # the full run (arith test split)
    python benchmarks/scaling.py --quick               # a few minutes: the smoke test
    python benchmarks/scaling.py --from docs/scaling.json   # re-render figures and docs only

What runs (through the real search loop, ``ponder.evaluation.evaluate``):

- a **pool**: best-of-N at the largest budget (``--pool``, default 256) per question. Best-of-N
  majority, verifier-weighted and best-scored (the single highest score) at every N ≤ pool are
  resampled from it (``evaluation/curves.py``), as the paper draws its best-of-N curves (not a
  new run per N).
- **tree searches and revisions**, one real run per method and budget (``--budgets``): beam
  search with M = 4 and M = √N, lookahead k = 1 and k = 3 (M = 4), DVTS (M = 4), sequential
  revisions, the sequential:parallel hybrid at ratios 0.25, 0.5, 0.75, and ``auto``.
- **the exchange** (paper §7): ``--large-samples`` samples per question of a larger model
  (``--large-model``; auto: ``arith-large`` when it is trained), whose pass@1 is set against the
  small model's weighted best-of-X at the FLOPs-matched X = M + 3(M − 1)/R for each ``--ratios``
  value (``ponder flops``), per difficulty bin. ``--extend FILE`` adds it to an earlier run.

Difficulty is binned the paper's two ways: *oracle* (quintiles of pass@1 over the pool) and
*predicted* (quintiles of the verifier's mean final score over the pool). Intervals are 95%
bootstrap over questions, paired where two methods are compared on the same questions.

Writes ``--out`` (every per-question result: the figures and the doc regenerate from it with
``--from``), the PNG figures beside ``--doc`` (``<page>_*.png``, e.g. ``scaling_*.png`` beside docs/scaling.md), the results part of ``--doc``
(everything above its notes marker), and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

NOTES_MARKER = "<!-- notes: everything below this line is kept when the page is regenerated -->"
HYBRID_RATIOS = (0.25, 0.5, 0.75)
TARGETS = {"auto_budget_ratio": 4.0, "auto_budget_ratio_moonshot": 8.0, "full_run_hours": 3.0, "quick_run_minutes": 10.0}


def methods(budget: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, strategy, options) of every method run at ``budget``."""
    root = max(1, round(math.sqrt(budget)))
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("beam M=4", "beam", {"beam_width": min(4, budget)}),
        ("beam M=√N", "beam", {"beam_width": root}),
        ("lookahead k=1", "lookahead", {"lookahead": 1, "beam_width": min(4, budget)}),
        ("lookahead k=3", "lookahead", {"lookahead": 3, "beam_width": min(4, budget)}),
        ("dvts M=4", "dvts", {"beam_width": min(4, budget)}),
        ("revision", "revision", {}),
        *[(f"hybrid r={r}", "hybrid", {"sequential_ratio": r}) for r in HYBRID_RATIOS],
        ("auto", "auto", {}),
    ]
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ponder bench scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="arith")
    ap.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:N, auto)")
    ap.add_argument("--dtype", default="auto", help="compute dtype (auto: bfloat16 on CUDA and, for the engine, on a CPU with native bf16; else "
                                                    "float32; with --extend, auto = the run's own dtype)")
    ap.add_argument("--verifier", default="auto")
    ap.add_argument("--dataset", default="arith:test:100")
    ap.add_argument("--pool", type=int, default=256, help="best-of-N samples per question")
    ap.add_argument("--budgets", default="4,16", help="budgets every method runs at")
    ap.add_argument("--large", default="64", help="larger budgets, run by the --large-methods only ('' for none)")
    ap.add_argument("--large-methods", default="beam M=4,beam M=√N,dvts M=4,auto",
                    help="the methods run at the --large budgets (revisions and lookahead cost the most time per generation)")
    ap.add_argument("--methods", default="", help="comma-separated labels to run (default: all)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="24 questions, a pool of 32, budgets 4 and 8")
    ap.add_argument("--out", default="", help="JSON with every per-question result")
    ap.add_argument("--doc", default="", help="markdown page to (re)write above its notes marker; figures beside it")
    ap.add_argument("--from", dest="source", default="", help="re-render from a JSON written by --out; run nothing")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--large-model", default="auto",
                    help="the larger model of the exchange (paper §7): auto = 'arith-large' for --model arith when it is trained, "
                         "'none' to skip; with --extend, auto = the run's own choice")
    ap.add_argument("--large-samples", type=int, default=16, help="samples per question of the larger model (its pass@1)")
    ap.add_argument("--ratios", default="", help="R = D_inference / D_pretrain values of the exchange "
                    "(default: those of ponder flops, 0.16,1,22)")
    ap.add_argument("--extend", default="",
                    help="a JSON written by --out: run only what it lacks (runs that lost questions to errors, "
                         "the larger model's samples; with --methods, the runs those methods name at --budgets "
                         "and --large), then analyse; write the merged data to --out")
    ap.add_argument("--rerun", default="", help="with --extend: comma-separated labels of runs to run again at every "
                    "budget they ran (after a model they use was retrained); the earlier results are kept under 'replaced'")
    a = ap.parse_args(argv)
    if a.rerun and not a.extend:
        raise SystemExit("ponder bench scaling: INVALID_ARGUMENT: rerun: --rerun goes with --extend (the run whose rows it replaces)")
    if a.quick:
        # budgets 4 and 8: revisions and the hybrid at 16 took 7 of the 12 minutes a quick run
        # with budget 16 took here
        a.dataset, a.pool, a.budgets, a.large, a.boot = "arith:test:24", 32, "4,8", "", 200
    return a


# -- running -----------------------------------------------------------------------------------


def _searcher(a: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The policy, the verifier and the evaluate() options every method of a run shares."""
    from ponder.workers.runtime import build_plan, build_policy, build_reviser, build_verifier, set_threads

    policy = build_policy(a.model, "auto", a.device, a.dtype)
    set_threads(0, policy)
    verifier = build_verifier(a.verifier, policy, a.model)
    plan = build_plan("auto", a.model, verifier)
    common = dict(seed=a.seed, concurrency=a.concurrency, max_rows=max(256, a.pool), progress=not a.json,
                  plan=plan, reviser=build_reviser("auto", a.model))
    return policy, verifier, common


def per_question(res: Any) -> dict[str, Any]:
    return {"correct": [bool(r.get("correct")) for r in res.answers], **usage_columns(res.answers), "wall_s": res.wall_s}


REVISER_STRATEGIES = ("revision", "hybrid", "auto")  # the strategies that may send prompts to the reviser


def reviser_id(model: str) -> str | None:
    """The first 12 hex digits of the sha256 of the model's reviser's weights (which reviser a
    revision row ran on; a retrained one has the same size, so a size-based fingerprint would not
    tell), None when the model has none."""
    import hashlib

    from ponder.workers.models import resolve

    name = resolve(model).default_reviser
    if not name:
        return None
    weights = sorted(Path(resolve(name).path).glob("*.safetensors"))
    h = hashlib.sha256()
    for f in weights:
        h.update(f.read_bytes())
    return h.hexdigest()[:12] if weights else None


POOL_CHUNK = 25  # questions of the pool sampled between two checkpoints of --out


def intended(a: argparse.Namespace) -> list[list[Any]]:
    """[label, budget] of every search run the arguments ask for, in run order."""
    small = {int(b) for b in a.budgets.split(",") if b.strip()}
    large = {int(b) for b in a.large.split(",") if b.strip()} - small
    wanted = {m for m in a.methods.split(",") if m}
    large_methods = {m for m in a.large_methods.split(",") if m}
    return [[label, budget] for budget in sorted(small | large) for label, _, _ in methods(budget)
            if not ((wanted and label not in wanted) or (budget in large and label not in large_methods))]


def run_all(a: argparse.Namespace) -> dict[str, Any]:
    from ponder.evaluation.evaluate import load_dataset
    from ponder.workers.runtime import verifier_spec

    items = load_dataset(a.dataset)
    plan = intended(a)
    data: dict[str, Any] = {
        "large": None, "large_model_spec": a.large_model, "ratios": ratios_arg(a), "model": a.model, "verifier": "",
        "vote_power": None,  # the verifier's, once it is loaded (runs from before it was recorded counted score ** 1)
        "verifier_spec": verifier_spec(a.verifier, a.model),  # auto resolved: the run repeats after a default changes
        "dataset": a.dataset, "questions": [{"question": it.question, "gold": it.gold} for it in items],
        "pool_size": a.pool, "budgets": sorted({b for _, b in plan}), "seed": a.seed, "plan": "",
        "pool": [], "pool_wall_s": 0.0, "runs": [], "intended": plan, "wall_s": 0.0, "concurrency": a.concurrency,
        "command": shlex.join(["python", "benchmarks/scaling.py", *a.argv]), "complete": False,
    }
    return complete(a, data, items)


def _same_run(r: dict[str, Any], strategy: str, budget: int, options: dict[str, Any]) -> bool:
    """Whether ``r`` is the run of these settings (beam M=√N is beam M=4 at N=16: one run, two labels)."""
    return r["strategy"] == strategy and r["budget"] == budget and r["options"] == options


def complete(a: argparse.Namespace, data: dict[str, Any], items: list[Any]) -> dict[str, Any]:
    """Run whatever ``data`` lacks, writing it to ``--out`` after every piece (so an interrupted
    run loses at most the piece in progress, and ``--extend`` goes on from there): the pool's
    questions not sampled yet (in chunks of :data:`POOL_CHUNK`, question i always with seed
    SEED + i), the intended runs not run yet, every run that lost questions to errors (the
    failed attempt kept under ``reruns``), and the larger model's samples if they are absent
    and a larger model is named."""
    from ponder.evaluation.evaluate import evaluate
    from ponder.workers.prm.likelihood import likelihood_judge

    started = time.time()
    spent_before = data.get("wall_s", 0.0)
    searcher: tuple[Any, Any, dict[str, Any]] | None = None
    reviser: dict[str, Any] | None = None  # the reviser's id, read once (its weights are hashed)

    def reviser_of() -> dict[str, Any]:
        nonlocal reviser
        if reviser is None:
            reviser = {"reviser": reviser_id(data["model"])}
        return reviser

    def setup() -> tuple[Any, Any, dict[str, Any]]:
        nonlocal searcher
        if searcher is None:
            searcher = _searcher(a)
            policy, verifier, common = searcher
            data["model"], data["verifier"], data["plan"] = policy.name, verifier.name if verifier else "none", common["plan"].summary()
            power = verifier.vote_power if verifier is not None else 1.0
            if data.get("vote_power", 1.0) is None:  # a new run: the verifier's
                data["vote_power"] = power
            if run_vote_power(data) != power:  # a run's selections all count votes one way
                raise SystemExit(f"ponder bench scaling: FAILED_PRECONDITION: this run's weighted votes counted score ** "
                                 f"{run_vote_power(data):g}; the verifier's vote power is now {power:g}: start a new run")
            data["dtype"] = policy.dtype  # what --extend keeps: one run's samples in one dtype
        return searcher

    def checkpoint() -> None:
        data["wall_s"] = spent_before + time.time() - started
        data["load_average"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        if a.out:
            tmp = Path(a.out).with_suffix(".partial")
            tmp.write_text(json.dumps(data) + "\n")
            tmp.replace(a.out)  # never a half-written file

    while len(data["pool"]) < len(items):
        policy, verifier, common = setup()
        lo = len(data["pool"])
        chunk = items[lo : lo + POOL_CHUNK]
        if not a.json:
            print(f"pool: questions {lo + 1}-{lo + len(chunk)} of {len(items)}", file=sys.stderr)
        (res,) = evaluate(policy, verifier, chunk, ["best_of_n"], [data["pool_size"]], budget_mode="fixed",
                          **{**common, "seed": data["seed"] + lo})
        data["pool"] += [{"candidates": [{k: c[k] for k in ("answer", "score", "correct")} for c in r.get("candidates", [])],
                          "flops": r["usage"]["flops"] if "usage" in r else 0.0,
                          "generations": r["usage"]["generations"] if "usage" in r else 0} for r in res.answers]
        data["pool_wall_s"] = data.get("pool_wall_s", 0.0) + res.wall_s
        checkpoint()
    runs = data["runs"]
    for label, budget in data.get("intended", []):
        if any(r["label"] == label and r["budget"] == budget for r in runs):
            continue
        match = [(strategy, options) for lab, strategy, options in methods(budget) if lab == label]
        if not match:
            raise SystemExit(f"ponder bench scaling: INVALID_ARGUMENT: methods: unknown method {label!r}")
        strategy, options = match[0]
        same = next((r for r in runs if _same_run(r, strategy, budget, options)), None)
        if same is not None:  # not run twice
            runs.append({**same, "label": label})
            continue
        policy, verifier, common = setup()
        (res,) = evaluate(policy, verifier, items, [strategy], [budget], **options, **common)
        runs.append({"label": label, "strategy": strategy, "budget": budget, "options": options, **per_question(res),
                     **(reviser_of() if strategy in REVISER_STRATEGIES else {})})
        checkpoint()
    done: set[int] = set()
    for run in [r for r in runs if r["errors"]]:
        if id(run) in done:
            continue
        policy, verifier, common = setup()
        same = [r for r in runs if r is not run and _same_run(r, run["strategy"], run["budget"], run["options"])]
        before = {k: run[k] for k in ("errors", "error_messages", "wall_s") if k in run}
        (res,) = evaluate(policy, verifier, items, [run["strategy"]], [run["budget"]], **run["options"], **common)
        for r in [run, *same]:  # runs shared under two labels stay one run
            done.add(id(r))
            r.update(per_question(res))
            r.setdefault("reruns", []).append(before)
        checkpoint()
    large, judge = large_model_name(a), likelihood_judge(data.get("verifier_spec") or "")
    if data.get("large") is None and large and not (judge and same_model(judge, large)):  # no trade against its own judge
        data["large"] = run_large(a, items)
        data["ratios"] = ratios_arg(a)
    data["complete"] = True
    checkpoint()
    return data


def ratios_arg(a: argparse.Namespace) -> list[float]:
    from ponder.evaluation.flops import DEFAULT_RATIOS, parse_ratios
    from ponder.proto.errors import InvalidArgument

    try:
        return parse_ratios(a.ratios or ",".join(map(str, DEFAULT_RATIOS)))
    except InvalidArgument as exc:
        raise SystemExit(f"ponder bench scaling: INVALID_ARGUMENT: {exc.message}") from None


def usage_columns(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per question: generations and FLOPs spent (0 for a failed question), and the failures."""
    return {
        "generations": [r["usage"]["generations"] if "usage" in r else 0 for r in recs],
        "flops": [r["usage"]["flops"] if "usage" in r else 0.0 for r in recs],
        "errors": sum("error" in r for r in recs),
        "error_messages": list(dict.fromkeys(r["error"] for r in recs if "error" in r)),
    }


def large_model_name(a: argparse.Namespace) -> str:
    """The larger model of the exchange, '' when there is none to run."""
    if a.large_model in ("", "none"):
        return ""
    if a.large_model != "auto":
        return a.large_model
    if a.model != "arith":
        return ""
    from ponder.workers.models import BUILTIN

    return "arith-large" if (BUILTIN["arith-large"] / "config.json").exists() else ""


def run_large(a: argparse.Namespace, items: list[Any]) -> dict[str, Any] | None:
    """The larger model's samples of every question (no verifier: its pass@1 is what the
    paper's exchange compares against), with both models' sizes for the FLOPs matching."""
    name = large_model_name(a)
    if not name:
        return None
    from ponder.evaluation.evaluate import evaluate
    from ponder.evaluation.flops import model_params
    from ponder.workers.runtime import build_policy

    if a.large_samples < 1:
        raise SystemExit(f"ponder bench scaling: INVALID_ARGUMENT: large_samples: must be >= 1, got {a.large_samples}")
    p_small, tokens_small = model_params(a.model)
    p_large, tokens_large = model_params(name)
    policy = build_policy(name, "auto", a.device, a.dtype)
    (res,) = evaluate(policy, None, items, ["best_of_n"], [a.large_samples], budget_mode="fixed", selection="majority",
                      seed=a.seed, concurrency=a.concurrency, max_rows=max(256, a.large_samples), progress=not a.json)
    return {
        "model": policy.name, "samples": a.large_samples, "params": p_large, "small_params": p_small,
        "pretrain_tokens": tokens_large, "small_pretrain_tokens": tokens_small,
        "correct": [[bool(c["correct"]) for c in r.get("candidates", [])] for r in res.answers],
        **usage_columns(res.answers), "wall_s": res.wall_s,
    }


def extend(a: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Go on with an earlier run's data (see :func:`complete`): what an interrupted run did not
    reach, the runs that lost questions to errors, the larger model's samples."""
    from ponder.evaluation.evaluate import load_dataset

    items = load_dataset(data["dataset"])
    if [it.question for it in items] != [q["question"] for q in data["questions"]]:
        raise SystemExit(f"ponder bench scaling: INVALID_ARGUMENT: extend: {data['dataset']} no longer gives the run's questions")
    a.model, a.seed, a.pool = data["model"], data.get("seed", a.seed), data["pool_size"]
    if a.verifier == "auto":  # the run's own verifier: its resolved spec (older runs recorded
        # "auto", resolved then to the verifier named in "verifier", or only that name)
        spec = data.get("verifier_spec") or "auto"
        a.verifier = (data.get("verifier") or "auto") if spec == "auto" else spec
    a.concurrency = data.get("concurrency", a.concurrency)
    if a.dtype == "auto":  # the run's own dtype (runs before it was recorded ran float32)
        a.dtype = data.get("dtype", "float32")
    if a.large_model == "auto":  # not named on this command: the run's own choice (a run with none stays without)
        a.large_model = data.get("large_model_spec", "auto")
    data.setdefault("intended", [[r["label"], r["budget"]] for r in data["runs"]])  # runs before it was recorded
    if any(x == "--methods" or x.startswith("--methods=") for x in a.argv):
        # methods added to an earlier run: the runs this command's --methods names at its
        # --budgets (and --large, for the --large-methods), on the run's own pool and questions
        added = [run for run in intended(a) if run not in data["intended"]]
        data["intended"] += added
        data["budgets"] = sorted({*data["budgets"], *(b for _, b in added)})
    command = shlex.join(["python", "benchmarks/scaling.py", *a.argv])
    if a.rerun:
        replace_runs(data, [m.strip() for m in a.rerun.split(",") if m.strip()], command)
    data.setdefault("extend_commands", []).append(command)
    return complete(a, data, items)


def replace_runs(data: dict[str, Any], labels: list[str], command: str) -> None:
    """Take the runs of ``labels`` out of ``data['runs']`` (at every budget; :func:`complete` then
    runs them again, as they stay intended), keeping a summary of each under ``data['replaced']``."""
    have = {r["label"] for r in data["runs"]}
    unknown = [m for m in labels if m not in have]
    if unknown:
        raise SystemExit(f"ponder bench scaling: INVALID_ARGUMENT: rerun: no run labelled {', '.join(map(repr, unknown))} "
                         f"in this file (it has {', '.join(sorted(have))})")
    kept = []
    for r in data["runs"]:
        if r["label"] not in labels:
            kept.append(r)
            continue
        n = max(1, len(r["correct"]))
        data.setdefault("replaced", []).append({
            "label": r["label"], "budget": r["budget"], "accuracy": sum(r["correct"]) / n,
            "generations": sum(r["generations"]) / n, "wall_s": r.get("wall_s"), "reviser": r.get("reviser"),
            "replaced_by": command, "replaced_at": time.strftime("%Y-%m-%d"),
        })
    data["runs"] = kept


# -- analysis ----------------------------------------------------------------------------------


def run_vote_power(data: dict[str, Any]) -> float:
    """The power a run's weighted votes counted (runs from before it was recorded: 1)."""
    return data.get("vote_power") or 1.0


def analyse(data: dict[str, Any], boot: int, seed: int) -> dict[str, Any]:
    from ponder.evaluation.curves import (
        best_allocation, bootstrap_indices, interval, matched_budget, paired_delta, pass_at_1, pool_curve, quintile_bins,
        verdict,
    )

    rng = random.Random(seed)
    pool, runs = data["pool"], data["runs"]
    q = len(pool)
    grid = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if n <= data["pool_size"]]
    weighted = pool_curve(pool, grid, 32, rng, "weighted", run_vote_power(data))
    majority = pool_curve(pool, grid, 32, rng, "majority")
    # the single highest-scored sample, on its own generator (draws and intervals), so every
    # other number keeps the draws it had before this curve was added
    rng_best = random.Random(seed + 1)
    best = pool_curve(pool, grid, 32, rng_best, "best")
    oracle = quintile_bins(pass_at_1(pool))
    predicted = quintile_bins(np.array([np.mean([c["score"] or 0.0 for c in r["candidates"]]) if r["candidates"] else 0.0 for r in pool]))
    flops_per_gen = float(np.mean([r["flops"] / max(1, r["generations"]) for r in pool]))
    boots = bootstrap_indices(q, boot, rng)

    def acc(x: np.ndarray, mask: np.ndarray | None = None, r: random.Random = rng) -> dict[str, Any]:
        x = x if mask is None else x[mask]
        if not len(x):
            return {"accuracy": None, "ci": [None, None], "questions": 0}
        b = bootstrap_indices(len(x), max(50, boot // 5), r)
        return {"accuracy": float(x.mean()), "ci": interval([float(x[i].mean()) for i in b]), "questions": int(len(x))}

    def by_bins(x: np.ndarray, bins: np.ndarray, r: random.Random = rng) -> dict[str, Any]:
        return {str(b): acc(x, bins == b, r) for b in range(1, 6)}

    curves = {}
    by_selection = {"best_of_n weighted": weighted, "best_of_n majority": majority, "best_of_n best": best}
    for name, mat in by_selection.items():
        r = rng_best if name == "best_of_n best" else rng
        curves[name] = {str(n): {**acc(mat[:, j], None, r), "generations": n, "flops": n * flops_per_gen,
                                 "oracle_bins": by_bins(mat[:, j], oracle, r), "predicted_bins": by_bins(mat[:, j], predicted, r)}
                        for j, n in enumerate(grid)}
    for run in runs:
        c = np.array(run["correct"], dtype=float)
        curves.setdefault(run["label"], {})[str(run["budget"])] = {
            **acc(c), "generations": float(np.mean(run["generations"])), "flops": float(np.mean(run["flops"])),
            "oracle_bins": by_bins(c, oracle), "predicted_bins": by_bins(c, predicted), "errors": run["errors"],
        }

    def col(label: str, budget: int) -> np.ndarray | None:
        if label in by_selection:
            mat = by_selection[label]
            return mat[:, grid.index(budget)] if budget in grid else None
        run = next((r for r in runs if r["label"] == label and r["budget"] == budget), None)
        return None if run is None else np.array(run["correct"], dtype=float)

    budgets = data["budgets"]
    small, mid, large = budgets[0], budgets[min(1, len(budgets) - 1)], budgets[-1]
    findings: list[dict[str, Any]] = []

    def compare(name: str, paper: str, a_label: str, b_label: str, budget: int, mask: np.ndarray | None, positive: bool) -> None:
        x, y = col(a_label, budget), col(b_label, budget)
        if x is None or y is None:
            findings.append({"finding": name, "paper": paper, "verdict": "not run", "measured": f"{a_label} or {b_label} at N={budget} was not run"})
            return
        sel = np.ones(q, dtype=bool) if mask is None else mask
        idx = np.flatnonzero(sel)
        d = paired_delta(x[idx], y[idx], bootstrap_indices(len(idx), boot, rng))
        findings.append({
            "finding": name, "paper": paper, "verdict": verdict(d, positive), **d, "questions": int(len(idx)),
            "measured": f"{a_label} {x[idx].mean():.3f} vs {b_label} {y[idx].mean():.3f} at N={budget} ({len(idx)} questions)",
        })

    medium_hard = oracle >= 3
    easy = oracle <= 2
    compare("Beam search beats best-of-N at small budgets", "beam > best-of-N at N ≤ 16 (Fig. 3)",
            "beam M=4", "best_of_n weighted", small, None, True)
    compare("Beam search beats best-of-N on medium and hard questions", "bins 3–5: beam > best-of-N (Fig. 3 right)",
            "beam M=4", "best_of_n weighted", mid, medium_hard, True)
    compare("Beam search over-optimises easy questions at large budgets", "bins 1–2 at large N: beam < best-of-N",
            "beam M=4", "best_of_n weighted", large, easy, False)
    compare("Lookahead search loses at equal compute", "lookahead (k=3) < beam at the same generations",
            "lookahead k=3", "beam M=4", mid, None, False)
    compare("Sequential revisions beat parallel sampling at equal budget", "revisions > best-of-N (Fig. 6 left)",
            "revision", "best_of_n weighted", mid, None, True)
    findings.append(ratio_finding(col, mid, oracle, boot, rng))
    # compute-optimal: auto's budget ratio against weighted best-of-N (the paper's 4x), at every
    # budget auto ran; the finding is decided at the middle budget
    def budget_ratio(run: dict[str, Any]) -> dict[str, Any]:
        c, g = np.array(run["correct"], dtype=float), np.array(run["generations"], dtype=float)
        ratios = [matched_budget(weighted[ix].mean(axis=0), grid, float(c[ix].mean())) / float(g[ix].mean())
                  for ix in [np.arange(q), *boots]]
        return {"budget": run["budget"], "accuracy": float(c.mean()), "generations": float(g.mean()),
                "matched": ratios[0] * float(g.mean()), "ratio": ratios[0], "ci": interval(ratios[1:])}

    auto_ratios = [budget_ratio(r) for r in runs if r["label"] == "auto"]
    auto = next((r for r in auto_ratios if r["budget"] == mid), None)
    if auto is None:
        findings.append({"finding": "Compute-optimal scaling matches best-of-N with 4× less compute", "paper": "4× (16 vs 64 generations)",
                         "verdict": "not run", "measured": "auto was not run"})
    else:
        ci = auto["ci"]
        v = "reproduced" if ci[0] >= 4 else ("reversed" if ci[1] < 1 else "not reproduced")
        findings.append({"finding": "Compute-optimal scaling matches best-of-N with 4× less compute", "paper": "4× (16 vs 64 generations)",
                         "verdict": v, "delta": auto["ratio"], "ci": ci, "questions": q, "generations": auto["generations"],
                         "measured": f"auto at N={mid}: accuracy {auto['accuracy']:.3f} with {auto['generations']:.1f} generations; "
                                     "weighted best-of-N needs {} for it: budget ratio {}".format(
                                         *_needs(auto["ratio"], auto["generations"], grid[-1]))})
    # the ceiling of moving budget between difficulty bins: weighted best-of-N in every bin, the
    # best N per bin chosen on these very questions (so an upper bound, not a method)
    def ceiling(kind: str, bins: np.ndarray, budget: int) -> dict[str, Any]:
        def one(ix: np.ndarray) -> tuple[float, float, list[int], float]:
            b, m = bins[ix], weighted[ix]
            w = np.array([(b == k).mean() for k in range(1, 6)])
            c = np.array([m[b == k].mean(axis=0) if (b == k).any() else np.zeros(len(grid)) for k in range(1, 6)])
            a, spent, ns = best_allocation(c, w, grid, budget)
            return a, spent, ns, matched_budget(m.mean(axis=0), grid, a) / spent
        a, spent, ns, r = one(np.arange(q))
        ci = interval([one(ix)[3] for ix in boots[: max(50, boot // 5)]])
        return {"bins": kind, "budget": budget, "accuracy": a, "generations": spent, "n_per_bin": ns, "ratio": r, "ci": ci}

    ceilings = [ceiling(kind, bins, b) for kind, bins in (("oracle", oracle), ("predicted", predicted))
                for b in data["budgets"] if b <= data["pool_size"]]
    swap = exchange(data, oracle, flops_per_gen, boot, rng)
    findings.append(swap["finding"])
    return {"grid": grid, "curves": curves, "findings": findings, "flops_per_generation": flops_per_gen, "exchange": swap["rows"],
            "auto_ratios": auto_ratios, "ceilings": ceilings,
            "exchange_sizes": swap["sizes"],
            "questions": q, "failed_runs": {f"{r['label']} N={r['budget']}": r["errors"] for r in runs if r["errors"]}}


EXCHANGE = "At R ≪ 1, test-time compute beats a larger model on easy and medium questions, not on the hardest"


def exchange(data: dict[str, Any], oracle: np.ndarray, pool_flops: float, boot: int, rng: random.Random) -> dict[str, Any]:
    """Paper §7 (Fig. 9): the small model with X(R) = M + 3(M − 1)/R generations of weighted
    best-of-N (drawn from its pool) against one sample of the M× larger model (its pass@1),
    overall, on easy and medium questions (oracle bins 1–3) and on the hardest (bins 4–5),
    with paired bootstrap intervals. The verdict is read at the smallest R. ``pool_flops``: the
    small model's FLOPs per generation."""
    from ponder.evaluation.curves import bootstrap_indices, paired_delta, pool_curve
    from ponder.evaluation.flops import DEFAULT_RATIOS, matched_generations
    from ponder.workers.prm.likelihood import likelihood_judge

    large = data.get("large")
    judge = likelihood_judge(data.get("verifier_spec") or data.get("verifier") or "")
    if not large or (judge and same_model(judge, large["model"])):
        if judge:
            why = (f"the verifier's judge `{judge}` is {'a' if not large else 'the'} larger model: the small model's side would pay "
                   "for its pretraining too, so no budget of the small model trades against it (X = M − 3/R < 0 at R < 3/M); "
                   "run the exchange with a verifier of the small model's own")
        else:
            why = ("no larger model: train one with the same recipe (`ponder train policy --layers 6 --width 384 "
                   "--ffn 1152 --heads 12 --out artifacts/arith/policy_large`) or pass --large-model")
        return {"finding": {"finding": EXCHANGE, "paper": "Fig. 9", "verdict": "not run", "measured": why}, "rows": [], "sizes": {}}
    m = large["params"] / large["small_params"]
    big = np.array([float(np.mean(c)) if c else 0.0 for c in large["correct"]])
    large_flops = float(np.mean([f / max(1, g) for f, g in zip(large["flops"], large["generations"])]))
    # The verifier's FLOPs are charged to the small model: when a generation of its pool (policy
    # and verifier) costs more than 1/M of the larger model's, X shrinks by that factor
    charge = min(1.0, large_flops / pool_flops / m) if pool_flops and large_flops else 1.0
    sizes = {"M": m, "params_small": large["small_params"], "params_large": large["params"], "large_model": large["model"],
             "large_samples": large["samples"], "pretrain_tokens_small": large.get("small_pretrain_tokens"),
             "pretrain_tokens_large": large.get("pretrain_tokens"), "large_pass_at_1": float(big.mean()),
             "inference_flops_ratio": large_flops / pool_flops if pool_flops else None, "verifier_charge": charge}
    masks = {"all": np.ones(len(big), dtype=bool), "easy_medium": oracle <= 3, "hard": oracle >= 4,
             **{f"bin {b}": oracle == b for b in range(1, 6)}}
    rows = []
    for r in sorted(data.get("ratios") or DEFAULT_RATIOS):
        x = matched_generations(m, r) * charge
        n = int(min(data["pool_size"], max(1, round(x))))
        small = pool_curve(data["pool"], [n], 32, rng, "weighted", run_vote_power(data))[:, 0]
        groups: dict[str, dict[str, Any]] = {}
        for name, mask in masks.items():
            idx = np.flatnonzero(mask)
            if not len(idx):
                groups[name] = {"questions": 0}
                continue
            d = paired_delta(small[idx], big[idx], bootstrap_indices(len(idx), boot, rng))
            groups[name] = {**d, "small": float(small[idx].mean()), "large": float(big[idx].mean()), "questions": int(len(idx))}
        rows.append({"R": r, "X": x, "N": n, "capped": x > data["pool_size"], "groups": groups})
    low = rows[0]
    em, hard = low["groups"]["easy_medium"], low["groups"]["hard"]
    if not em.get("questions") or not hard.get("questions"):
        v = "not run"
    elif em["ci"][0] > 0 and hard["ci"][1] < 0:
        v = "reproduced"
    elif em["ci"][1] < 0:
        v = "reversed"
    else:
        v = "not reproduced"
    measured = (f"M = {m:.2f}× parameters; at R = {low['R']:g} the small model gets X = {low['X']:.1f} generations "
                f"(weighted best-of-{low['N']}): bins 1–3 {em.get('small', float('nan')):.3f} vs {em.get('large', float('nan')):.3f} "
                f"for the larger model, bins 4–5 {hard.get('small', float('nan')):.3f} vs {hard.get('large', float('nan')):.3f}")
    finding = {"finding": EXCHANGE, "paper": "Fig. 9", "verdict": v, "measured": measured, "questions": int(len(big)),
               "delta": em.get("delta"), "ci": em.get("ci", [None, None]), "hard_delta": hard.get("delta"), "hard_ci": hard.get("ci")}
    return {"finding": finding, "rows": rows, "sizes": sizes}


def same_model(a: str, b: str) -> bool:
    """Whether two model names or paths load the same directory."""
    if a == b:
        return True
    from ponder.proto.errors import InvalidArgument
    from ponder.workers.models import resolve

    try:
        return resolve(a).path.resolve() == resolve(b).path.resolve()
    except InvalidArgument:  # a model that does not resolve is not the other one
        return False


def ratio_finding(col: Any, budget: int, oracle: np.ndarray, boot: int, rng: random.Random) -> dict[str, Any]:
    """The best sequential:parallel ratio by difficulty (Fig. 7): easy questions want more
    sequential, hard ones a mix. Measured: the argmax ratio of the easiest vs the hardest
    two bins, and how often (bootstrap) the easy argmax is the larger."""
    name, paper = "The best sequential:parallel ratio depends on difficulty", "easy → all sequential, hard → a mix (Fig. 7)"
    labels = [("best_of_n weighted", 0.0), *[(f"hybrid r={r}", r) for r in HYBRID_RATIOS], ("revision", 1.0)]
    cols = [(r, col(label, budget)) for label, r in labels]
    cols = [(r, c) for r, c in cols if c is not None]
    if len(cols) < 3:
        return {"finding": name, "paper": paper, "verdict": "not run", "measured": "revision/hybrid runs missing"}
    ratios = np.array([r for r, _ in cols])
    mat = np.stack([c for _, c in cols], axis=1)  # (Q, ratios)
    easy, hard = oracle <= 2, oracle >= 4

    def best(mask: np.ndarray, ix: np.ndarray | None = None) -> float:
        """The best ratio; ties (easy bins are often perfect at several ratios) count as the
        mean of the tied ratios, so neither end of the scale wins a tie by its position."""
        sel = mask if ix is None else mask[ix]
        m = mat if ix is None else mat[ix]
        if not sel.any():
            return float("nan")
        acc = m[sel].mean(axis=0)
        return float(ratios[np.isclose(acc, acc.max())].mean())

    e, h = best(easy), best(hard)
    from ponder.evaluation.curves import bootstrap_indices

    wins = [best(easy, ix) > best(hard, ix) for ix in bootstrap_indices(len(oracle), boot, rng)]
    share = float(np.mean(wins))
    v = "reproduced" if share >= 0.95 else ("reversed" if share <= 0.05 else "not reproduced")
    per_bin = {str(b): {str(r): float(mat[oracle == b, k].mean()) if (oracle == b).any() else None for k, r in enumerate(ratios)}
               for b in range(1, 6)}
    return {"finding": name, "paper": paper, "verdict": v, "delta": e - h, "ci": [share, share], "questions": int(len(oracle)),
            "per_bin": per_bin,
            "measured": f"best ratio at N={budget}: {e:g} on bins 1–2, {h:g} on bins 4–5; easy > hard in {share:.0%} of resamples"}


# -- figures and the page ----------------------------------------------------------------------


def figures(data: dict[str, Any], res: dict[str, Any], folder: Path, stem: str = "scaling") -> list[str]:
    """The PNG figures, named ``<stem>_*.png`` (the page's own name: docs/scaling.md -> scaling_search.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = res["curves"]
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(name)

    def style(ax: Any, xlabel: str, title: str, log_base: int | None = 2) -> None:
        if log_base:
            ax.set_xscale("log", base=log_base)
        ax.set(xlabel=xlabel, ylabel="accuracy", title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel with nothing measured gets no empty legend
            ax.legend(fontsize=7)

    def line(ax: Any, label: str, key: str = "generations", **kw: Any) -> None:
        pts = sorted(curves.get(label, {}).values(), key=lambda p: p[key])
        if pts:
            ax.plot([p[key] for p in pts], [p["accuracy"] for p in pts], marker="o", label=label, **kw)

    # Fig. 3: search methods against generations, overall and by oracle bin
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4))
    for label in ("best_of_n weighted", "best_of_n majority", "best_of_n best", "beam M=4", "beam M=√N", "lookahead k=1",
                  "lookahead k=3", "dvts M=4"):
        line(ax, label)
    style(ax, "generations per question", "search methods (cf. paper Fig. 3 left)")
    budgets = [b for b in data["budgets"] if str(b) in curves.get("beam M=4", {})]
    width = 0.8 / max(1, 2 * len(budgets))
    for k, b in enumerate(budgets):
        for j, label in enumerate(("best_of_n weighted", "beam M=4")):
            p = curves[label].get(str(b))
            if p is None:
                continue
            vals = [p["oracle_bins"][str(i)]["accuracy"] or 0.0 for i in range(1, 6)]
            bx.bar(np.arange(1, 6) + (2 * k + j) * width - 0.4, vals, width, label=f"{label} N={b}")
    style(bx, "oracle difficulty bin (1 = easiest)", "by difficulty (cf. Fig. 3 right)", None)
    save(fig, f"{stem}_search.png")

    # Fig. 4: compute-optimal (auto) against best-of-N, in generations and FLOPs
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key in zip(axes, ("generations", "flops")):
        line(ax, "best_of_n weighted", key)
        line(ax, "best_of_n best", key, linestyle="--")
        line(ax, "beam M=4", key)
        line(ax, "auto", key, linewidth=2.5)
        style(ax, f"{key} per question", f"compute-optimal vs best-of-N ({key}; cf. Fig. 4)", 2 if key == "generations" else 10)
    save(fig, f"{stem}_compute_optimal.png")

    # Fig. 6/7: revisions and the sequential:parallel ratio
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label in ("best_of_n weighted", "revision", *[f"hybrid r={r}" for r in HYBRID_RATIOS]):
        line(ax, label)
    style(ax, "generations per question", "revisions vs parallel (cf. Fig. 6)")
    ratio = next((f for f in res["findings"] if "per_bin" in f), None)
    if ratio:
        for b, row in ratio["per_bin"].items():
            rs = [float(r) for r in row]
            bx.plot(rs, [row[r] if row[r] is not None else np.nan for r in row], marker="o", label=f"bin {b}")
    style(bx, "sequential ratio (0 = best-of-N, 1 = one chain)", "ratio by oracle bin (cf. Fig. 7)", None)
    save(fig, f"{stem}_revisions.png")

    # Fig. 9: exchanging pretraining for test-time compute, by difficulty
    rows = res.get("exchange") or []
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        groups = ["all", *[f"bin {b}" for b in range(1, 6)]]
        width = 0.8 / len(rows)
        for k, row in enumerate(rows):
            g = [row["groups"][name] for name in groups]
            ys = [c.get("delta", np.nan) if c.get("questions") else np.nan for c in g]
            err = np.array([[c["delta"] - c["ci"][0], c["ci"][1] - c["delta"]] if c.get("questions") else [0, 0] for c in g]).T
            ax.bar(np.arange(len(groups)) + k * width - 0.4 + width / 2, ys, width, yerr=err, capsize=2,
                   label=f"R = {row['R']:g} (X = {row['X']:.1f})")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(groups)), groups)
        sz = res.get("exchange_sizes") or {}
        style(ax, "oracle difficulty bin (1 = easiest)",
              f"small + test-time compute − {sz.get('M', 0):.1f}× larger model (cf. Fig. 9)", None)
        ax.set_ylabel("accuracy difference")
        save(fig, f"{stem}_exchange.png")
    return written


def _needs(ratio: float, generations: float, pool: int) -> tuple[str, str]:
    """Weighted best-of-N's generations for an accuracy, and the budget ratio, as the page writes
    them: above the whole pool's accuracy only their lower bounds are known ("> 128 (the pool)")."""
    if math.isfinite(ratio):
        return f"{ratio * generations:.1f}", f"{ratio:.2f}×"
    return f"> {pool} (the pool)", f"> {pool / generations:.1f}×"


def _ci(ci: list[Any]) -> str:
    if ci[0] is None:
        return "–"
    return "[" + ", ".join("∞" if not math.isfinite(x) else f"{x:.3f}" for x in ci) + "]"


def render(data: dict[str, Any], res: dict[str, Any], command: str, stem: str = "scaling") -> str:
    curves, grid = res["curves"], res["grid"]
    lines = [
        "# Scaling test-time compute: the paper's findings on ponder",
        "",
        f"Produced by `{command}` — model `{data['model']}`, verifier `{data['verifier']}` (weighted votes count "
        f"score ** {run_vote_power(data):g}), {res['questions']} questions of "
        f"`{data['dataset']}`, a best-of-{data['pool_size']} pool per question, budgets {', '.join(map(str, data['budgets']))} "
        f"for the searches; {data['wall_s'] / 60:.0f} min on this machine (load average at the end {data['load_average']}). "
        f"Every number on this page is written by that command; `--from docs/{stem}.json` regenerates the page and figures "
        "without re-running. Intervals: 95% bootstrap over questions (paired for comparisons)."
        + (f" The larger model's samples were added by `{data['large_command']}` ({data.get('large_wall_s', 0) / 60:.0f} min)."
           if data.get("large_command") else "")
        + "".join(f" Then `{c}` added what the run lacked." for c in data.get("extend_commands", []))
        + ("" if data.get("complete", True) else
           f" **This run is incomplete** ({len(data['pool'])} of {len(data['questions'])} questions pooled, "
           f"{len(data['runs'])} of {len(data.get('intended', []))} runs done): `--extend` on its JSON goes on from there."),
        "",
        "## Findings",
        "",
        "| finding (paper) | verdict | measured | difference [95% interval] |",
        "|---|---|---|---|",
    ]
    for f in res["findings"]:
        diff = f"{f['delta']:+.3f} {_ci(f['ci'])}" if "delta" in f and "per_bin" not in f and "ratio" not in f["finding"] else ""
        if f["finding"].startswith("Compute-optimal") and "delta" in f:
            diff = f"{_needs(f['delta'], f['generations'], grid[-1])[1]} {_ci(f['ci'])}"
        if f["finding"] == EXCHANGE and f.get("hard_ci"):
            diff = f"bins 1–3: {f['delta']:+.3f} {_ci(f['ci'])}; bins 4–5: {f['hard_delta']:+.3f} {_ci(f['hard_ci'])}"
        lines.append(f"| {f['finding']} ({f['paper']}) | **{f['verdict']}** | {f['measured']} | {diff} |")
    if len(res.get("auto_ratios", [])) > 1:
        lines += ["", "`auto`'s budget ratio at every budget it ran (weighted best-of-N's generations for `auto`'s accuracy, "
                  "over `auto`'s generations; the finding above is decided at the middle budget; where the best-of-N curve is flat, "
                  "a question more or less moves the ratio a lot, so read the interval):", "",
                  "| N | auto accuracy | auto generations | best-of-N needs | ratio [95% interval] |", "|---|---|---|---|---|"]
        for r in res["auto_ratios"]:
            needs, ratio = _needs(r["ratio"], r["generations"], grid[-1])
            lines.append(f"| {r['budget']} | {r['accuracy']:.3f} | {r['generations']:.1f} | {needs} | {ratio} {_ci(r['ci'])} |")
    if res.get("ceilings"):
        lines += ["", "How much moving budget between difficulty bins could give at best: weighted best-of-N in every bin, "
                  "with the N of each bin chosen on these same questions to maximise accuracy at the average budget (an upper "
                  "bound for any allocation by bin, not a method; with oracle bins it also knows each question's pass rate):", "",
                  "| bins | N | accuracy | generations | N per bin (1 = easiest) | best-of-N needs | ratio [95% interval] |",
                  "|---|---|---|---|---|---|---|"]
        for c in res["ceilings"]:
            needs, ratio = _needs(c["ratio"], c["generations"], grid[-1])
            lines.append(f"| {c['bins']} | {c['budget']} | {c['accuracy']:.3f} | {c['generations']:.1f} | "
                         f"{', '.join(map(str, c['n_per_bin']))} | {needs} | {ratio} {_ci(c['ci'])} |")
    lines += ["", "## Accuracy against generations", "",
              "| method | " + " | ".join(f"N={n}" for n in grid) + " |", "|---|" + "---|" * len(grid)]
    for label, pts in curves.items():
        cells = []
        for n in grid:
            p = pts.get(str(n))
            cells.append("" if p is None else f"{p['accuracy']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Generations and GFLOPs actually spent per question (lookahead charges N·(k+1) ≤ N; auto's are adaptive):", "",
              "| method | " + " | ".join(f"N={n}" for n in data["budgets"]) + " |", "|---|" + "---|" * len(data["budgets"])]
    for label, pts in curves.items():
        if label.startswith("best_of_n"):
            continue
        cells = [f"{pts[str(n)]['generations']:.1f} / {pts[str(n)]['flops'] / 1e9:.2f}" if str(n) in pts else "" for n in data["budgets"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    failed = [r for r in data["runs"] if r.get("errors")]
    if failed:
        lines += ["", "**Failed questions** (counted as wrong, with 0 generations, in every number on this page):", ""]
        for r in failed:
            why = "; ".join(r.get("error_messages") or []) or "the run did not record the messages (a run before they were kept)"
            lines.append(f"- {r['label']} N={r['budget']}: {r['errors']} of {len(r['correct'])} questions failed: {why}")
    rerun = [r for r in data["runs"] if r.get("reruns")]
    if rerun:
        lines += ["", "**Runs run again by `--extend`** (their numbers above are from the last attempt):", ""]
        for r in rerun:
            tries = "; ".join(f"{t.get('errors', 0)} failed ({'; '.join(t.get('error_messages') or []) or 'messages not recorded'})"
                              for t in r["reruns"])
            lines.append(f"- {r['label']} N={r['budget']}: earlier attempt(s): {tries}; now {r['errors']} failed")
    replaced = data.get("replaced") or []
    if replaced:
        now = {(r["label"], r["budget"]): r for r in data["runs"]}

        def successor(i: int) -> dict[str, Any] | None:
            """What replaced ``replaced[i]``: the next replaced run of that row if it too was
            replaced later, else the row's current run (as a summary)."""
            key = (replaced[i]["label"], replaced[i]["budget"])
            later = next((r for r in replaced[i + 1:] if (r["label"], r["budget"]) == key), None)
            if later is not None:
                return later
            cur = now.get(key)
            return None if cur is None else {"accuracy": sum(cur["correct"]) / max(1, len(cur["correct"])),
                                             "reviser": cur.get("reviser")}

        lines += ["", "**Runs replaced by `--extend --rerun`** (run again; the numbers above are the last runs'):"]
        numbered = list(enumerate(replaced))
        for (cmd, day), group in itertools.groupby(numbered, key=lambda ir: (ir[1]["replaced_by"], ir[1]["replaced_at"])):
            lines += ["", f"On {day}, by `{cmd}`:", ""]
            for i, old in group:
                new = successor(i)
                acc = f"{new['accuracy']:.3f}" if new else "not run again yet"
                rev = (f" (reviser {old.get('reviser') or 'not recorded'} → {new.get('reviser')})"
                       if new and old.get("reviser") != new.get("reviser") else "")
                lines.append(f"- {old['label']} N={old['budget']}: {old['accuracy']:.3f}, then {acc}{rev}")
    for kind in ("oracle", "predicted"):
        b = data["budgets"][min(1, len(data["budgets"]) - 1)]
        lines += ["", f"By {kind} difficulty at N={b} (bin 1 = easiest; {kind}: "
                  + ("quintiles of pass@1 over the pool" if kind == "oracle" else "quintiles of the verifier's mean score over the pool") + "):", "",
                  "| method | bin 1 | bin 2 | bin 3 | bin 4 | bin 5 |", "|---|---|---|---|---|---|"]
        for label, pts in curves.items():
            p = pts.get(str(b))
            if p is None:
                continue
            cells = [f"{c['accuracy']:.2f}" if c["accuracy"] is not None else "–" for c in p[f"{kind}_bins"].values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"![search methods]({stem}_search.png)", "", f"![compute-optimal]({stem}_compute_optimal.png)", "",
              f"![revisions]({stem}_revisions.png)", ""]
    lines += render_exchange(data, res, stem)
    return "\n".join(lines)


def render_exchange(data: dict[str, Any], res: dict[str, Any], stem: str = "scaling") -> list[str]:
    """The exchange section (paper §7, Fig. 9), when a larger model was run."""
    rows, sz = res.get("exchange") or [], res.get("exchange_sizes") or {}
    if not rows:
        return []
    ratio = sz.get("inference_flops_ratio")
    out = ["## Exchanging pretraining for test-time compute (paper §7)", "",
           f"The small model (`{data['model']}`, {sz['params_small'] / 1e6:.2f}M non-embedding parameters) against "
           f"`{sz['large_model']}` ({sz['params_large'] / 1e6:.2f}M, M = {sz['M']:.2f}×; same data, recipe and "
           f"{sz['pretrain_tokens_large'] or 0:,} pretraining tokens). The larger model answers with one sample: its pass@1, "
           f"the mean over {sz['large_samples']} samples at the same temperature, is {sz['large_pass_at_1']:.3f}. "
           f"The small model spends X = M + 3(M − 1)/R generations of weighted best-of-N (resampled from its pool), the "
           f"budget at which pretraining plus inference FLOPs are equal (6·P·D_pretrain + 2·P·D_inference)."
           + (f" Measured inference FLOPs per generation of the larger model: {ratio:.2f}× the small one's." if ratio else "")
           + (f" The small model's generations include its verifier's FLOPs, so X is scaled by that measured ratio over M: "
              f"×{sz['verifier_charge']:.2f}." if sz.get("verifier_charge", 1.0) < 0.995 else ""),
           "",
           "| R = D_inference / D_pretrain | X (generations) | N used | small, all | larger, all | Δ all | "
           "Δ bin 1 | Δ bin 2 | Δ bin 3 | Δ bin 4 | Δ bin 5 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        g = row["groups"]
        cells = [f"{g[f'bin {b}']['delta']:+.2f}" if g[f"bin {b}"].get("questions") else "–" for b in range(1, 6)]
        out.append(f"| {row['R']:g} | {row['X']:.1f} | {row['N']}{' (pool cap)' if row['capped'] else ''} | "
                   f"{g['all']['small']:.3f} | {g['all']['large']:.3f} | {g['all']['delta']:+.3f} {_ci(g['all']['ci'])} | "
                   + " | ".join(cells) + " |")
    out += ["", "Δ = small model with X generations − larger model, per oracle difficulty bin (the small model's pass@1 "
            "quintiles, bin 1 = easiest); the interval is a paired bootstrap over questions.", "",
            f"![exchange]({stem}_exchange.png)", ""]
    return out


def write_doc(path: Path, block: str) -> None:
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else NOTES_MARKER + "\n"
    path.write_text(block + "\n" + notes)


def _ratio_summary(auto: dict[str, Any], pool: int) -> dict[str, Any]:
    """auto's budget ratio for the JSON line, which has no infinities: past the whole pool's
    accuracy the ratio is null and its lower bound given; an unbounded interval end is null."""
    from ponder.evaluation.curves import json_finite

    ratio = auto.get("delta")
    beyond = ratio is not None and not math.isfinite(ratio)
    return {"auto_budget_ratio": json_finite(ratio), "auto_budget_ratio_at_least": pool / auto["generations"] if beyond else None,
            "auto_budget_ratio_ci": json_finite(auto.get("ci"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    a.argv = list(argv or [])
    if a.source:
        data = json.loads(Path(a.source).read_text())
    elif a.extend:  # both write --out after every piece (complete())
        data = extend(a, json.loads(Path(a.extend).read_text()))
    else:
        data = run_all(a)
    res = analyse(data, a.boot, a.seed)
    if a.doc:
        doc = Path(a.doc)
        figures(data, res, doc.parent, doc.stem)
        write_doc(doc, render(data, res, data.get("command", "python benchmarks/scaling.py"), doc.stem))
    if not a.json:
        for f in res["findings"]:
            print(f"{f['verdict']:>15}  {f['finding']}: {f['measured']}")
    auto: dict[str, Any] = next((f for f in res["findings"] if f["finding"].startswith("Compute-optimal")), {})
    summary = {"benchmark": "scaling", "questions": res["questions"], "pool": data["pool_size"], "budgets": data["budgets"],
               "verdicts": {f["finding"]: f["verdict"] for f in res["findings"]},
               **_ratio_summary(auto, res["grid"][-1]),
               "wall_s": round(data["wall_s"], 1), "targets": TARGETS}
    print(json.dumps(summary, ensure_ascii=False))
    return {"data": data, "analysis": res, "summary": summary}


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
