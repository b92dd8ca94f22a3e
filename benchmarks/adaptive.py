"""Adaptive budgets benchmark: ``auto`` and the live controller against verifier-weighted
best-of-N, on the same questions, in one run.

Runs through the real search loop (``ponder.evaluation.evaluate``; every question of a group in one
batch of ``--concurrency``, so the budget bank is shared the way a worker shares it):

- best-of-N, fixed budget, at the largest budget (64): its candidates are also the *pool* from
  which weighted best-of-N at every smaller N is resampled (bootstrap over random draws);
- best-of-N at the same nominal N with the live controller (``budget.mode = adaptive``,
  ``max_generations = N``, so it stops and abandons but never widens): the controller alone;
- ``auto`` (adaptive) at each ``--auto-budgets`` (default 8 and 16).

Reports per run: accuracy with a 95% bootstrap interval over questions, generations, tokens and
FLOPs per question (pilot, verifier and everything else included), and how often the answer
agrees with the fixed best-of-N answer of the same question. The headline is the paper's metric,
the *budget ratio*: the smallest weighted best-of-N budget (interpolated on the pool's curve, in
generations and in FLOPs) that matches a run's accuracy, divided by what the run spent, with a 95%
interval (bootstrap over questions). Best-of-m's FLOPs are priced as m times the fixed run's FLOPs
per generation, which spreads the prompt's prefill over all of its samples: a slight underprice
at small m, so the FLOPs ratio is conservative. The controller's false-stop rate is also simulated on the
pool itself (random sample orders; see training/plan.py), where the full-budget answer is
known exactly. Difficulty is reported both ways: the predicted bins auto chose, and oracle bins
(quintiles of pass@1 over the pool).

Writes ``--out`` (JSON with every figure), a plot (``--plot``) and, last, one JSON line.
``--quick`` runs 24 questions with budgets up to 16 (a few minutes; the smoke test).

    python benchmarks/adaptive.py                    # the full run (arith test split, 160 questions)
    python benchmarks/adaptive.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"auto_ratio": 4.0, "auto_ratio_moonshot": 8.0, "controller_generation_share": 0.5,
           "controller_accuracy_loss": 0.01, "stop_agreement": 0.98}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ponder bench adaptive", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="arith")
    ap.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:N, auto)")
    ap.add_argument("--dtype", default="auto", help="compute dtype (auto: bfloat16 on CUDA and, for the engine, on a CPU with native bf16; else float32)")
    ap.add_argument("--verifier", default="auto")
    ap.add_argument("--plan", default="auto", help="the plan table (auto: the model's)")
    ap.add_argument("--dataset", default="arith:test:160")
    ap.add_argument("--budget", type=int, default=64, help="the pool's size and best-of-N's largest budget")
    ap.add_argument("--auto-budgets", default="8,16")
    ap.add_argument("--concurrency", type=int, default=16, help="questions in one batch (they share the bank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    ap.add_argument("--quick", action="store_true", help="24 questions, budgets up to 16")
    ap.add_argument("--out", default="", help="JSON with every figure (default: none)")
    ap.add_argument("--plot", default="", help="PNG of accuracy against generations and FLOPs")
    ap.add_argument("--doc", default="", help="a markdown file whose results block (between "
                    "'<!-- results -->' and '<!-- /results -->') is rewritten with this run's tables")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    a = ap.parse_args(argv)
    if a.quick:
        a.dataset, a.budget, a.auto_budgets, a.boot = "arith:test:24", 16, "4,8", 200
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    from ponder.evaluation.curves import (
        bootstrap_indices, interval, json_finite, matched_budget, norm, pass_at_1, pool_curve, quintile_bins,
    )
    from ponder.evaluation.evaluate import evaluate, load_dataset
    from ponder.workers.runtime import build_plan, build_policy, build_reviser, build_verifier, set_threads, verifier_spec
    from ponder.training.plan import Question, Trajectories

    started = time.time()
    items = load_dataset(a.dataset)
    policy = build_policy(a.model, "auto", a.device, a.dtype)
    set_threads(0, policy)
    verifier = build_verifier(a.verifier, policy, a.model)
    plan = build_plan(a.plan, a.model, verifier)
    revises = any(c.strategy in ("revision", "hybrid") for row in plan.plans.values() for c in row.values())
    reviser = build_reviser("auto", a.model) if revises else None
    auto_budgets = [int(b) for b in a.auto_budgets.split(",") if b]
    n = a.budget
    common = dict(seed=a.seed, concurrency=a.concurrency, max_rows=max(256, n * 4), progress=not a.json, plan=plan,
                  reviser=reviser)
    runs: dict[str, Any] = {}
    (runs["best_of_n fixed"],) = evaluate(policy, verifier, items, ["best_of_n"], [n], budget_mode="fixed", **common)
    # the controller alone: live stopping at the same nominal N, no widening (max = N)
    (runs["best_of_n adaptive"],) = evaluate(policy, verifier, items, ["best_of_n"], [n], budget_mode="adaptive",
                                             max_generations=n, **common)
    for b in auto_budgets:
        (runs[f"auto {b}"],) = evaluate(policy, verifier, items, ["auto"], [b], **common)

    full = runs["best_of_n fixed"]
    ok = [i for i, rec in enumerate(full.answers) if "error" not in rec and all(
        "error" not in r.answers[i] for r in runs.values())]
    pool = [full.answers[i] for i in ok]
    rng = random.Random(a.seed)
    grid = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256} & set(range(1, n + 1)) | {n})
    power = verifier.vote_power if verifier is not None else 1.0  # weighted votes as the worker counts them
    curve = pool_curve(pool, grid, 64 if not a.quick else 16, rng, "weighted", power)  # (Q, B)
    flops_per_gen = np.array([full.answers[i]["usage"]["flops"] / max(1, full.answers[i]["usage"]["generations"]) for i in ok])
    oracle_bin = quintile_bins(pass_at_1(pool))  # 1 = easiest

    report: dict[str, Any] = {"questions": len(ok), "budget": n, "verifier": verifier_spec(a.verifier, a.model),
                              "plan": plan.summary(), "runs": {}}
    boot_idx = bootstrap_indices(len(ok), a.boot, rng)
    for name, res in runs.items():
        recs = [res.answers[i] for i in ok]
        correct = np.array([bool(r["correct"]) for r in recs], dtype=float)
        gens = np.array([r["usage"]["generations"] for r in recs], dtype=float)
        flops = np.array([r["usage"]["flops"] for r in recs], dtype=float)
        agree = np.array([norm(r["answer"]) == norm(full.answers[i]["answer"]) for r, i in zip(recs, ok)])
        stops = np.array([r.get("stop_reason") == "settled" for r in recs])
        row: dict[str, Any] = {
            "accuracy": float(correct.mean()),
            "accuracy_ci": interval([float(correct[ix].mean()) for ix in boot_idx]),
            "generations": float(gens.mean()), "max_generations": int(gens.max()), "total_generations": int(gens.sum()),
            "nominal_total": int(sum(r.get("nominal_generations") or n for r in recs)),
            "flops": float(flops.mean()),
            "agreement_with_fixed": float(agree.mean()),
            "agreement_of_stopped": float(agree[stops].mean()) if stops.any() else None,
            "stopped": float(stops.mean()),
            "abandoned": float(np.mean([bool(r.get("low_confidence")) for r in recs])),
            "wall_s": res.wall_s,
        }
        # the paper's metric: weighted best-of-N's budget at equal accuracy / this run's spend
        ratios, fratios = [], []
        for ix in [np.arange(len(ok)), *boot_idx]:
            acc = float(correct[ix].mean())
            m = matched_budget(curve[ix].mean(axis=0), grid, acc)
            ratios.append(m / float(gens[ix].mean()))
            fratios.append(m * float(flops_per_gen[ix].mean()) / float(flops[ix].mean()))
        row["budget_ratio"], row["budget_ratio_ci"] = ratios[0], interval(ratios[1:])
        row["flops_ratio"], row["flops_ratio_ci"] = fratios[0], interval(fratios[1:])
        bins = {}
        for b in range(1, 6):
            mask = oracle_bin == b
            bins[str(b)] = {"questions": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else None,
                            "generations": float(gens[mask].mean()) if mask.any() else None}
        row["oracle_bins"] = bins
        predicted = [int(r.get("difficulty_bin") or 0) for r in recs]
        if any(predicted):
            row["predicted_bins"] = {
                str(b): {"questions": int(sum(p == b for p in predicted)),
                         "accuracy": float(np.mean([c for c, p in zip(correct, predicted) if p == b])) if b in predicted else None,
                         "generations": float(np.mean([g for g, p in zip(gens, predicted) if p == b])) if b in predicted else None,
                         "plans": sorted({d["plan"] for r, p in zip(recs, predicted) if p == b for d in r.get("decisions", []) if d["kind"] == "plan"})}
                for b in range(1, 6)
            }
        report["runs"][name] = row
    report["best_of_n_curve"] = {str(g): float(curve[:, j].mean()) for j, g in enumerate(grid)}
    # the controller on the pool itself: the full-budget answer is known exactly there
    qs = [Question(r["question"], [c["answer"] for c in r["candidates"]], np.array([c["score"] or 0.0 for c in r["candidates"]]),
                   np.array([bool(c["correct"]) for c in r["candidates"]]), {}) for r in pool]
    sim = Trajectories(qs, plan.controller.wave, 16, a.seed).run(plan.controller, n)
    report["controller_on_pool"] = sim
    ctl, best = report["runs"]["best_of_n adaptive"], report["runs"]["best_of_n fixed"]
    headline_auto = f"auto {max(auto_budgets)}"
    report["summary"] = {
        "auto_budget_ratio": report["runs"][headline_auto]["budget_ratio"],
        "auto_budget_ratio_ci": report["runs"][headline_auto]["budget_ratio_ci"],
        "auto_flops_ratio": report["runs"][headline_auto]["flops_ratio"],
        "auto_accuracy": report["runs"][headline_auto]["accuracy"],
        "best_of_n_accuracy": best["accuracy"],
        "controller_generation_share": ctl["generations"] / best["generations"],
        "controller_accuracy_delta": ctl["accuracy"] - best["accuracy"],
        "controller_budget_ratio": ctl["budget_ratio"],
        "controller_budget_ratio_ci": ctl["budget_ratio_ci"],
        # of the questions the controller stopped early on the pool's own samples, the share
        # that kept the full-budget answer (the 98%)
        "stop_agreement_on_pool": sim["stop_agreement"],
        # the same against an independent best-of-N run (different samples): a lower bound that
        # includes run-to-run disagreement
        "stopped_agree_with_independent_full_run": ctl["agreement_of_stopped"],
        "batch_never_overspent": all(r["total_generations"] <= r["nominal_total"] for r in report["runs"].values()),
    }
    report["targets"] = TARGETS
    report["wall_s"] = time.time() - started
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    if a.plot:
        plot(report, grid, Path(a.plot))
    if a.doc:
        write_doc(Path(a.doc), render_markdown(report, a))
    if not a.json:
        for name, row in report["runs"].items():
            print(f"{name:20s} acc {row['accuracy']:.3f} [{row['accuracy_ci'][0]:.3f}, {row['accuracy_ci'][1]:.3f}]  "
                  f"gens {row['generations']:6.1f}  GFLOPs {row['flops'] / 1e9:6.2f}  "
                  f"budget ratio {row['budget_ratio']:.2f} [{row['budget_ratio_ci'][0]:.2f}, {row['budget_ratio_ci'][1]:.2f}]")
    line = {"benchmark": "adaptive", "questions": len(ok), **report["summary"], "wall_s": round(report["wall_s"], 1)}
    # JSON has no infinities: a ratio past the whole pool, or an unbounded interval end, is null
    print(json.dumps(json_finite(line), allow_nan=False))
    return report


def _ci(v: list[float], fmt: str = "{:.3f}") -> str:
    return "[" + ", ".join("∞" if not math.isfinite(x) else fmt.format(x) for x in v) + "]"


def render_markdown(report: dict[str, Any], a: argparse.Namespace) -> str:
    """The results block of docs/adaptive.md: every number below comes from this run."""
    cmd = ("python benchmarks/adaptive.py" + (" --quick" if a.quick else "") + (f" --model {a.model}" if a.model != "arith" else "")
           + f" --dataset {a.dataset} --verifier {report['verifier']}")
    lines = [
        f"Measured by `{cmd}` ({report['questions']} questions, seed {a.seed}, batches of {a.concurrency} questions, "
        f"{report['wall_s'] / 60:.1f} min on this machine). Intervals: 95% bootstrap over questions.",
        "",
        f"Plan table: {report['plan']}",
        "",
        "| run | accuracy | 95% interval | generations / question | max | GFLOPs / question | budget ratio (generations) | budget ratio (FLOPs) | agrees with fixed best-of-N | stopped | abandoned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {_ci(r['accuracy_ci'])} | {r['generations']:.1f} | {r['max_generations']} | "
            f"{r['flops'] / 1e9:.2f} | {r['budget_ratio']:.2f} {_ci(r['budget_ratio_ci'], '{:.2f}')} | "
            f"{r['flops_ratio']:.2f} {_ci(r['flops_ratio_ci'], '{:.2f}')} | {r['agreement_with_fixed']:.3f} | "
            f"{r['stopped']:.0%} | {r['abandoned']:.0%} |"
        )
    curve = report["best_of_n_curve"]
    lines += ["", "Weighted best-of-N on the pool (expected accuracy over random draws of N of the pool's samples):", "",
              "| N | " + " | ".join(curve) + " |", "|---|" + "---|" * len(curve),
              "| accuracy | " + " | ".join(f"{v:.3f}" for v in curve.values()) + " |", ""]
    lines += ["By oracle difficulty (quintiles of pass@1 over the pool; 1 = easiest): accuracy / generations per question", "",
              "| run | " + " | ".join(f"bin {b}" for b in range(1, 6)) + " |", "|---|" + "---|" * 5]
    for name, r in report["runs"].items():
        cells = [f"{c['accuracy']:.2f} / {c['generations']:.1f}" if c["questions"] else "–" for c in r["oracle_bins"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, r in report["runs"].items():
        if "predicted_bins" in r:
            lines += ["", f"{name}, by predicted difficulty (the bin its pilot chose): questions, accuracy, generations, plans", "",
                      "| bin | questions | accuracy | generations | plan |", "|---|---|---|---|---|"]
            for b, c in r["predicted_bins"].items():
                if c["questions"]:
                    lines.append(f"| {b} | {c['questions']} | {c['accuracy']:.3f} | {c['generations']:.1f} | {'; '.join(c['plans'])} |")
    sim, s = report["controller_on_pool"], report["summary"]
    lines += [
        "",
        f"The controller simulated on the pool itself (16 random sample orders per question, no bank, nominal N = {report['budget']}): "
        f"{sim['generations']:.1f} generations per question, accuracy {sim['accuracy']:.3f} against {sim['full_accuracy']:.3f} "
        f"for the full pool; of the questions it stopped early, {sim['stop_agreement']:.1%} kept the full-budget answer; "
        f"{sim['stopped']:.0%} stopped, {sim['abandoned']:.0%} abandoned.",
        "",
        f"Batches never spent more than their nominal total: **{s['batch_never_overspent']}**.",
        "",
        "![adaptive budgets](adaptive.png)",
    ]
    return "\n".join(lines)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else "<!-- results -->\n<!-- /results -->\n"
    head, sep, rest = text.partition("<!-- results -->")
    _, sep2, tail = rest.partition("<!-- /results -->")
    if not sep or not sep2:
        raise SystemExit(f"{path} has no '<!-- results -->' ... '<!-- /results -->' block")
    path.write_text(f"{head}<!-- results -->\n{block}\n<!-- /results -->{tail}")


def plot(report: dict[str, Any], grid: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = report["best_of_n_curve"]
    ax.plot(grid, [curve[str(g)] for g in grid], "o-", color="0.4", label="weighted best-of-N (pool)")
    marks = {"best_of_n fixed": "s", "best_of_n adaptive": "D"}
    for name, row in report["runs"].items():
        lo, hi = row["accuracy_ci"]
        ax.errorbar([row["generations"]], [row["accuracy"]], yerr=[[row["accuracy"] - lo], [hi - row["accuracy"]]],
                    fmt=marks.get(name, "*"), markersize=9, capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generations per question (spent)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report['questions']} questions: adaptive budgets vs best-of-N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
