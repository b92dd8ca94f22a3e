"""``ponder train plan``: fit ``auto``'s plan table and the live controller from measurements.

Input: a *pool* — ``ponder eval --strategies best_of_n --budgets S --out POOL`` on fitting
questions, which records every sample's answer, verifier score and correctness — and optionally
*runs* of the tree strategies (``ponder eval --strategies beam,dvts --budgets 4,16 --out RUNS``)
on the same questions. Without ``--pool`` the command draws both itself.

What is fitted (everything by simulation on the pool, with random sample orders):

- **Difficulty bins** (the paper's predicted difficulty): the mean verifier score of the
  ``pilot`` first samples; the edges are its 20/40/60/80% quantiles.
- **Plan cells**: for each bin and budget, the strategy with the best accuracy on that bin's
  questions: verifier-weighted or majority best-of-N or the single best-scored sample (expected
  accuracy over random draws from the pool), or a tree run at that budget (its recorded
  correctness). Anything other than weighted best-of-N must beat it significantly on the bin's
  questions (paired, one-sided 95%). Every candidate's accuracy per cell is kept in the table
  (``fit.cell_accuracy``).
- **Controller thresholds**: the grid point that spends the fewest generations at the largest
  budget while its answer agrees with the full-budget answer on >= 98% of the questions and its
  accuracy stays within 0.5 point of the full budget's (controller.py). Agreement is measured
  on the questions the controller stopped early (an abandoned question's answer is a guess by
  design; abandoning is bounded by the accuracy condition instead).

The paper's 2-fold cross-validation: the questions are split in two; each half's table is fitted
on the other half and scored on it; the reported figures are those held-out scores. The table
that ships is then fitted on all questions.

    ponder train plan --model arith      # the committed table: 384 validation questions, hybrid and revisions
    ponder train plan --model arith --pool pool.json --runs trees.json --out plan.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ponder.evaluation.curves import norm, winner
from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import vote_weight
from ponder.workers.models import BUILTIN
from ponder.workers.search.controller import ControllerConfig, min_votes
from ponder.workers.search.plan import N_BINS, PlanTable, StrategyPlan, plan_file

log = logging.getLogger(__name__)

PERMUTATIONS = 16  # random sample orders per question in the simulations
# A plan cell leaves weighted best-of-N (the paper's baseline, and the strategy the controller
# steers) only on evidence: the alternative's paired per-question gain on the bin's fitting
# questions must be positive at one-sided 95% (mean - 1.645 standard errors > 0). With 128
# questions in 5 bins, picking the raw best cell lost 0.6-0.8 points in 2-fold CV at N = 16 and 64.
Z_ONE_SIDED_95 = 1.645
TARGET_AGREEMENT = 0.98
# The grid point is chosen on the fitting questions, so its agreement there is biased high: fit
# with a margin above the target (without one, a held-out fold measured 97.1%).
FIT_MARGIN = 0.005
MAX_ACCURACY_LOSS = 0.005
GRID = {
    "min_candidates": (4, 8),
    "window": (2, 4, 6, 8),
    "stop_share": (0.6, 0.7, 0.75, 0.8, 0.9),
    "abandon_after": (8, 12, 16, 24, 4096),  # 4096: never abandon
    "abandon_score": (0.1, 0.15, 0.2, 0.3),
    "abandon_share": (0.3, 0.4, 0.5),
}


@dataclass
class Question:
    question: str
    answers: list[str | None]  # every pool sample's answer, in pool order
    scores: np.ndarray  # (S,) verifier final scores
    correct: np.ndarray  # (S,) bool
    runs: dict[tuple[str, int], bool]  # (strategy label, budget) -> recorded correctness


def load_pool(pool: Path, runs: Sequence[Path] = ()) -> list[Question]:
    """Questions of a best-of-N pool file, with the tree runs of the same questions attached."""
    data = json.loads(Path(pool).read_text())
    groups = [r for r in data["results"] if r["strategy"] == "best_of_n"]
    if not groups:
        raise InvalidArgument("pool", f"{pool} holds no best_of_n group (ponder eval --strategies best_of_n --out ...)")
    group = max(groups, key=lambda r: r["budget"])
    out: dict[str, Question] = {}
    for rec in group["answers"]:
        cands = rec.get("candidates") or []
        if "error" in rec or len(cands) < 2 or any(c["score"] is None for c in cands):
            continue
        out[rec["question"]] = Question(
            rec["question"], [c["answer"] for c in cands], np.array([c["score"] for c in cands], dtype=np.float64),
            np.array([bool(c["correct"]) for c in cands]), {},
        )
    for path in runs:
        for r in json.loads(Path(path).read_text())["results"]:
            for rec in r["answers"]:
                q = out.get(rec["question"])
                if q is not None and "error" not in rec:
                    q.runs[(r["strategy"], r["budget"])] = bool(rec["correct"])
    if len(out) < 2 * N_BINS:
        raise InvalidArgument("pool", f"{pool} has {len(out)} usable questions; at least {2 * N_BINS} are needed")
    return list(out.values())


# -- simulation on the pool ---------------------------------------------------------------------


class Trajectories:
    """Per question and random order: the vote statistics after each wave of samples."""

    def __init__(self, qs: list[Question], wave: int, perms: int, seed: int, power: float = 1.0) -> None:
        rng = random.Random(seed)
        size = min(len(q.answers) for q in qs)
        self.waves = size // wave
        shape = (len(qs), perms, self.waves)
        self.n = np.zeros(shape)
        self.share = np.zeros(shape)
        self.stable = np.zeros(shape)
        self.votes = np.zeros(shape)  # the leader's own votes
        self.mean = np.zeros(shape)
        self.correct = np.zeros(shape, dtype=bool)
        self.agree = np.zeros(shape, dtype=bool)
        self.pilot_mean = np.zeros((len(qs), perms))
        self.full_correct = np.zeros(len(qs), dtype=bool)
        self.orders: list[list[list[int]]] = []  # [question][permutation] -> sample order
        for i, q in enumerate(qs):
            self.orders.append([])
            gold = {norm(a) for a, c in zip(q.answers, q.correct) if c}
            full = winner(q.answers[:size], [float(x) for x in q.scores[:size]], power=power)
            self.full_correct[i] = full in gold
            for p in range(perms):
                order = list(range(size))
                rng.shuffle(order)
                self.orders[i].append(order)
                weights: dict[str, float] = {}
                counts: dict[str, int] = {}
                leader, stable, total = None, 0, 0.0
                for k, j in enumerate(order):
                    a, s = norm(q.answers[j]), float(q.scores[j])
                    total += s
                    if a is not None:
                        weights[a] = weights.get(a, 0.0) + vote_weight(s, power)
                        counts[a] = counts.get(a, 0) + 1
                    lead = max(weights.items(), key=lambda kv: kv[1])[0] if weights else None
                    stable = stable + 1 if lead == leader and lead is not None else (1 if lead is not None else 0)
                    leader = lead
                    if (k + 1) % wave == 0:
                        w = (k + 1) // wave - 1
                        wsum = sum(weights.values())
                        self.n[i, p, w] = k + 1
                        self.share[i, p, w] = weights[leader] / wsum if leader is not None and wsum > 0 else 0.0
                        self.stable[i, p, w] = stable
                        self.votes[i, p, w] = counts.get(leader, 0) if leader is not None else 0
                        self.mean[i, p, w] = total / (k + 1)
                        self.correct[i, p, w] = leader in gold
                        self.agree[i, p, w] = leader == full
                self.pilot_mean[i, p] = float(np.mean([q.scores[j] for j in order[:wave]]))

    def run(self, cfg: ControllerConfig, budget: int, idx: np.ndarray | None = None) -> dict[str, float]:
        """The controller at nominal ``budget`` (no bank): mean generations, accuracy, agreement.
        Decisions fall after whole waves, as in the search loop; a budget that is not a multiple
        of the wave is simulated as the multiple below it."""
        last = min(self.waves, max(1, budget // cfg.wave)) - 1
        sl = slice(None) if idx is None else idx
        cut = (sl, slice(None), slice(0, last + 1))
        n, share, stable, mean, votes = self.n[cut], self.share[cut], self.stable[cut], self.mean[cut], self.votes[cut]
        # the same rule as controller.decide
        stop = (n >= cfg.min_candidates) & (share >= cfg.stop_share) & (stable >= cfg.window) & (votes >= min_votes(cfg))
        abandon = (n >= cfg.min_candidates) & (n >= cfg.abandon_after) & (mean <= cfg.abandon_score) & (share < cfg.abandon_share)
        ends = stop | abandon
        ends[..., last] = True
        at = ends.argmax(axis=-1)  # first wave where the question ends
        pick = lambda a: np.take_along_axis(a[sl, :, : last + 1], at[..., None], axis=-1)[..., 0]  # noqa: E731
        spent = pick(self.n)
        full = self.run_full(last, idx)
        agree = pick(self.agree)
        stopped_early = np.take_along_axis(stop, at[..., None], axis=-1)[..., 0] & (at < last)
        at_full = last == self.waves - 1  # agreement is only known when the budget is the pool
        return {
            "generations": float(spent.mean()),
            "accuracy": float(pick(self.correct).mean()),
            "agreement": float(agree.mean()) if at_full else float("nan"),
            # the measure: of the questions stopped early, how many kept the full answer
            "stop_agreement": float(agree[stopped_early].mean()) if at_full and stopped_early.any() else float("nan"),
            "full_accuracy": full,
            "stopped": float(np.take_along_axis(stop, at[..., None], axis=-1).mean()),
            "abandoned": float((np.take_along_axis(abandon & ~stop, at[..., None], axis=-1)).mean()),
        }

    def run_full(self, last: int, idx: np.ndarray | None) -> float:
        sl = slice(None) if idx is None else idx
        return float(self.correct[sl, :, last].mean())


def fit_controller(traj: Trajectories, budget: int, idx: np.ndarray, wave: int) -> tuple[ControllerConfig, dict[str, float], int]:
    """The grid point with the fewest generations at ``budget`` that keeps agreement and accuracy."""
    best: tuple[float, ControllerConfig, dict[str, float]] | None = None
    tried = 0
    names = list(GRID)
    for values in itertools.product(*(GRID[n] for n in names)):
        params: dict[str, Any] = dict(zip(names, values))
        cfg = ControllerConfig(wave=wave, widen_min_score=0.0, **params)
        tried += 1
        r = traj.run(cfg, budget, idx)
        if not r["stop_agreement"] >= TARGET_AGREEMENT + FIT_MARGIN or r["accuracy"] < r["full_accuracy"] - MAX_ACCURACY_LOSS:
            continue
        if best is None or r["generations"] < best[0]:
            best = (r["generations"], cfg, r)
    if best is None:  # nothing qualifies: never stop early
        cfg = ControllerConfig(wave=wave, stop_share=1.0, window=4096, abandon_after=4096)
        return cfg, traj.run(cfg, budget, idx), tried
    _, cfg, r = best
    # widen only questions at least as promising as the ones the controller would not abandon
    return ControllerConfig(**(cfg.as_dict() | {"widen_min_score": cfg.abandon_score})), r, tried


def bestof_accuracy(q: Question, n: int, selection: str, draws: int, rng: random.Random, power: float = 1.0) -> float:
    """Expected accuracy of best-of-n on ``q`` with ``selection`` (weighted votes ``score ** power``)
    over random draws from its pool."""
    gold = {norm(a) for a, c in zip(q.answers, q.correct) if c}
    idx = list(range(len(q.answers)))
    hits = 0
    for _ in range(draws):
        pick = rng.sample(idx, min(n, len(idx)))
        hits += winner([q.answers[j] for j in pick], [float(q.scores[j]) for j in pick], selection, power) in gold
    return hits / draws


def cell_scores(
    qs: list[Question], budget: int, draws: int, seed: int, pilot: int = 4, power: float = 1.0
) -> dict[str, np.ndarray]:
    """Per question, the accuracy of every candidate plan at ``budget``. auto runs a tree plan
    with what the pilot leaves (``budget - pilot``), so a tree run at that budget stands for the
    cell when there is one, else the run at ``budget`` (an approximation: it had the pilot's
    share too). No tree plan fits when the pilot takes the whole budget."""
    rng = random.Random(seed)
    out = {
        f"best_of_n {sel}": np.array([bestof_accuracy(q, budget, sel, draws, rng, power) for q in qs])
        for sel in ("weighted", "majority", "best")
    }
    if budget <= pilot:
        return out
    for strategy in sorted({k[0] for q in qs for k in q.runs}):
        for b in (budget - pilot, budget):
            if all((strategy, b) in q.runs for q in qs):
                out[strategy] = np.array([float(q.runs[(strategy, b)]) for q in qs])
                break
    return out


PLAN_OF = {
    "best_of_n weighted": StrategyPlan("best_of_n", selection="weighted"),
    "best_of_n majority": StrategyPlan("best_of_n", selection="majority"),
    "best_of_n best": StrategyPlan("best_of_n", selection="best"),
    "beam": StrategyPlan("beam", beam_width=4),
    "lookahead": StrategyPlan("lookahead", beam_width=4),
    "dvts": StrategyPlan("dvts", beam_width=4),
    "hybrid": StrategyPlan("hybrid"),
    "revision": StrategyPlan("revision"),
}


def pick_cell(scores: dict[str, np.ndarray], mask: np.ndarray, base: str = "best_of_n weighted") -> str:
    """The plan for the questions in ``mask``: ``base`` unless another beats it significantly
    (paired, one-sided 95%); among those that do, the largest mean gain."""
    n = int(mask.sum())
    if n < 2:
        return base
    best, best_gain = base, 0.0
    for name, acc in scores.items():
        if name == base:
            continue
        d = acc[mask] - scores[base][mask]
        gain, se = float(d.mean()), float(d.std(ddof=1)) / n**0.5
        if gain - Z_ONE_SIDED_95 * se > 0 and gain > best_gain:
            best, best_gain = name, gain
    return best


def fit_table(
    qs: list[Question], traj: Trajectories, idx: np.ndarray, budgets: Sequence[int], pilot: int, draws: int, seed: int,
    power: float = 1.0,
) -> tuple[tuple[float, ...], dict[int, dict[int, StrategyPlan]], dict[int, dict[int, str]], dict[str, Any]]:
    """Bin edges, the best plan per (bin, budget), its name, and every candidate's mean
    accuracy per budget and bin (with the bin's question count), from the questions ``idx``."""
    means = traj.pilot_mean[idx].ravel()
    edges = tuple(float(e) for e in np.quantile(means, [0.2, 0.4, 0.6, 0.8]))
    table = PlanTable(pilot=pilot, edges=edges)
    # a question's bin: that of its typical pilot (the median over the random orders)
    bins = np.array([table.bin_of(float(np.median(traj.pilot_mean[i]))) for i in idx])
    plans: dict[int, dict[int, StrategyPlan]] = {}
    names: dict[int, dict[int, str]] = {}
    accuracy: dict[str, Any] = {}
    for budget in budgets:
        scores = cell_scores([qs[i] for i in idx], budget, draws, seed + budget, pilot, power)
        accuracy[str(budget)] = {"all": {name: round(float(acc.mean()), 4) for name, acc in scores.items()} | {"questions": len(idx)}}
        for b in range(1, N_BINS + 1):
            mask = bins == b
            chosen = pick_cell(scores, mask)
            plans.setdefault(b, {})[budget] = PLAN_OF.get(chosen, StrategyPlan(chosen))
            names.setdefault(b, {})[budget] = chosen
            accuracy[str(budget)][str(b)] = {name: round(float(acc[mask].mean()), 4) if mask.any() else None
                                             for name, acc in scores.items()} | {"questions": int(mask.sum())}
    return edges, plans, names, accuracy


def cross_validate(
    qs: list[Question], traj: Trajectories, budgets: Sequence[int], pilot: int, draws: int, seed: int, power: float = 1.0
) -> dict[str, Any]:
    """The paper's 2-fold CV of the plan choice and of the controller (held-out figures)."""
    order = list(range(len(qs)))
    random.Random(seed).shuffle(order)
    folds = [np.array(sorted(order[::2])), np.array(sorted(order[1::2]))]
    held: dict[str, Any] = {"plan": {}, "controller": []}
    wave = pilot
    for f in range(2):
        fit_idx, test_idx = folds[1 - f], folds[f]
        edges, plans, _, _ = fit_table(qs, traj, fit_idx, budgets, pilot, draws, seed, power)
        table = PlanTable(pilot=pilot, edges=edges, plans=plans)
        bins = np.array([table.bin_of(float(np.median(traj.pilot_mean[i]))) for i in test_idx])
        for budget in budgets:
            scores = cell_scores([qs[i] for i in test_idx], budget, draws, seed + 7 * budget, pilot, power)
            chosen = []
            for k, i in enumerate(test_idx):
                cell = table.lookup(int(bins[k]), budget)
                key = next((name for name, p in PLAN_OF.items() if p == cell), cell.strategy)
                chosen.append(scores.get(key, scores["best_of_n weighted"])[k])
            h = held["plan"].setdefault(str(budget), {"compute_optimal": 0.0, "best_of_n_weighted": 0.0, "questions": 0})
            h["compute_optimal"] += float(np.sum(chosen))
            h["best_of_n_weighted"] += float(np.sum(scores["best_of_n weighted"]))
            h["questions"] += len(test_idx)
        cfg, fitted, _ = fit_controller(traj, max(budgets), fit_idx, wave)
        held["controller"].append({"fold": f, "config": cfg.as_dict(), "fit": fitted, "held_out": traj.run(cfg, max(budgets), test_idx)})
    for h in held["plan"].values():
        h["compute_optimal"] /= h["questions"]
        h["best_of_n_weighted"] /= h["questions"]
    runs = [c["held_out"] for c in held["controller"]]
    held["controller_mean"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    return held


def fit(
    qs: list[Question], budgets: Sequence[int], pilot: int = 4, draws: int = 32, seed: int = 0, power: float = 1.0
) -> PlanTable:
    """The table and controller for ``qs``; weighted votes count ``score ** power`` (the
    verifier's vote power, as the worker will count them)."""
    traj = Trajectories(qs, pilot, PERMUTATIONS, seed, power)
    cv = cross_validate(qs, traj, budgets, pilot, draws, seed, power)
    everyone = np.arange(len(qs))
    edges, plans, names, accuracy = fit_table(qs, traj, everyone, budgets, pilot, draws, seed, power)
    cfg, fitted, tried = fit_controller(traj, max(budgets), everyone, pilot)
    small = {str(b): traj.run(cfg, b) for b in budgets}
    return PlanTable(
        pilot=pilot, edges=edges, plans=plans, controller=cfg,
        fit={
            "questions": len(qs), "samples_per_question": int(min(len(q.answers) for q in qs)),
            "permutations": PERMUTATIONS, "draws": draws, "budgets": list(budgets), "grid_points": tried,
            "vote_power": power,
            "targets": {"agreement": TARGET_AGREEMENT, "max_accuracy_loss": MAX_ACCURACY_LOSS},
            "cells": {str(b): {str(n): names[b][n] for n in row} for b, row in names.items()},
            # every candidate's mean accuracy per budget and bin (tree runs at the budget less the pilot)
            "cell_accuracy": accuracy,
            "controller_fit": fitted, "controller_by_budget": small, "cross_validation": cv,
        },
    )


# -- the command ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder train plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="arith")
    p.add_argument("--verifier", default="auto")
    p.add_argument("--dataset", default="arith:validation:384:7", help="fitting questions (not the test split)")
    p.add_argument("--pool", default="", help="a best-of-N pool from `ponder eval --out` (default: draw one)")
    p.add_argument("--runs", default="", help="comma-separated `ponder eval --out` files of tree strategies")
    p.add_argument("--samples", type=int, default=64, help="pool samples per question when drawing one")
    p.add_argument("--tree-strategies", default="hybrid,revision", help="tree strategies to run when drawing (none: '')")
    p.add_argument("--budgets", default="4,16,64")
    p.add_argument("--pilot", type=int, default=4)
    p.add_argument("--draws", type=int, default=32, help="random draws per question for best-of-N accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="default: beside the model, over plan.json when that was fitted for "
                                             "the same verifier, else plan-<verifier>.json")
    return p


def draw_commands(a: argparse.Namespace, budgets: list[int], work: Path = Path(".")) -> list[list[str]]:
    """The ``ponder eval`` arguments that draw the pool and, when asked, the tree runs."""
    common = ["--model", a.model, "--verifier", a.verifier, "--dataset", a.dataset, "--seed", str(a.seed), "--plan", "default"]
    cmds = [[*common, "--strategies", "best_of_n", "--budgets", str(a.samples), "--out", str(work / "pool.json")]]
    trees = [s for s in a.tree_strategies.split(",") if s]
    # a tree plan runs on what the pilot leaves: N - pilot
    small = ",".join(str(b - a.pilot) for b in budgets if a.pilot < b <= 16)
    if trees and small:
        cmds.append([*common, "--strategies", ",".join(trees), "--budgets", small, "--out", str(work / "trees.json")])
    return cmds


def default_out(model_dir: Path, verifier: str) -> Path:
    """Where a table fitted for ``verifier`` goes beside the model: over the model's
    ``plan.json`` when that was fitted for the same verifier, else ``plan-<verifier>.json`` — so
    refitting never overwrites another verifier's table, also after the model's default verifier
    changed. A table without a verifier is always ``plan.json`` (the only place it is found)."""
    own = model_dir / plan_file()
    if own.exists() and verifier:
        fitted = str(json.loads(own.read_text()).get("verifier") or "")
        return own if fitted == verifier else model_dir / plan_file(verifier)
    return model_dir / plan_file(verifier)


def reproduce_command(a: argparse.Namespace) -> str:
    """The one command that draws the same samples and fits the same table."""
    trees = a.tree_strategies or "''"
    return (f"ponder train plan --model {a.model} --verifier {a.verifier} --dataset {a.dataset} --samples {a.samples} "
            f"--tree-strategies {trees} --budgets {a.budgets} --pilot {a.pilot} --draws {a.draws} --seed {a.seed}")


def _draw(a: argparse.Namespace, budgets: list[int], work: Path) -> tuple[Path, list[Path]]:
    from ponder.evaluation import evaluate

    cmds = draw_commands(a, budgets, work)
    for cmd in cmds:
        if evaluate.main(cmd) != 0:
            raise InvalidArgument("pool", f"drawing samples failed: ponder eval {' '.join(cmd)}")
    return work / "pool.json", [work / "trees.json"] if len(cmds) > 1 else []


def main(argv: list[str] | None = None) -> int:
    from ponder.workers.models import resolve
    from ponder.workers.prm.confidence import model_fingerprint
    from ponder.workers.runtime import build_policy, build_verifier, verifier_spec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    # the samples are drawn, and the commands recorded, with the verifier auto names today
    a.verifier = verifier_spec(a.verifier, a.model)
    try:
        budgets = sorted({int(b) for b in a.budgets.split(",") if b.strip()})
    except ValueError:
        raise InvalidArgument("budgets", f"must be comma-separated integers, got {a.budgets!r}") from None
    if not budgets or budgets[0] < 1:
        raise InvalidArgument("budgets", "name at least one positive budget")
    if a.pilot < 1 or a.pilot > budgets[0]:
        raise InvalidArgument("pilot", f"must be in [1, {budgets[0]}] (the smallest budget), got {a.pilot}")
    started = time.time()
    files = resolve(a.model)
    if a.pool:
        pool, runs = Path(a.pool), [Path(r) for r in a.runs.split(",") if r]
    else:
        work = Path(a.out or ".").resolve().parent / ".plan-fit"
        work.mkdir(parents=True, exist_ok=True)
        pool, runs = _draw(a, budgets, work)
    header = json.loads(Path(pool).read_text())
    verifier = build_verifier(a.verifier, build_policy(a.model), a.model)
    running = verifier.name if verifier else "none"
    for key, want in (("model", files.name), ("verifier", running)):
        if header.get(key, want) != want:
            raise InvalidArgument("pool", f"{pool} was drawn with {key} {header.get(key)!r}, not {want!r}: "
                                          "a table is fitted on the samples of the model and verifier it will serve")
    power = verifier.vote_power if verifier is not None else 1.0
    for path in runs:  # tree runs selected their answers with the vote power of their day
        drawn = json.loads(Path(path).read_text()).get("vote_power", 1.0)
        if drawn != power:
            raise InvalidArgument("runs", f"{path} was run with vote power {drawn:g}, the verifier's is now {power:g}: "
                                          "draw the runs again (or fit without them)")
    qs = load_pool(pool, runs)
    if min(len(q.answers) for q in qs) < max(budgets):
        raise InvalidArgument("budgets", f"the pool has {min(len(q.answers) for q in qs)} samples per question; "
                                         f"budgets up to {max(budgets)} need as many")
    table = fit(qs, budgets, a.pilot, a.draws, a.seed, power)
    table = PlanTable(
        model=files.name, fingerprint=model_fingerprint(files), verifier=verifier.name if verifier else "",
        pilot=table.pilot, edges=table.edges, plans=table.plans, controller=table.controller,
        fit=table.fit | {"command": "ponder train plan " + " ".join(argv), "reproduce": reproduce_command(a),
                         "sample_commands": ["ponder eval " + " ".join(c) for c in draw_commands(a, budgets)], "dataset": a.dataset,
                         "pool": str(pool), "runs": [str(r) for r in runs], "wall_seconds": round(time.time() - started, 1)},
    )
    out = Path(a.out) if a.out else default_out(Path(files.path), verifier.name if verifier is not None else "")
    table.save(out)
    if a.model in BUILTIN:  # a committed model's table goes into the artifacts' manifest
        from ponder.training import manifest

        root = out.resolve().parents[1]
        if (root / manifest.MANIFEST).exists() and out.resolve().is_relative_to(root):
            manifest.update(root, f"{a.model}-{out.stem}", [out.resolve()], table.fit["reproduce"])
    cv = table.fit["cross_validation"]
    print(PlanTable.load(out).summary())
    print(json.dumps({"out": str(out), "plan_cv": cv["plan"], "controller_cv": cv["controller_mean"],
                      "controller": table.controller.as_dict(), "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
