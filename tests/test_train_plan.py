"""`ponder train plan`: the plan table and controller fitted from a synthetic sample pool whose
questions are easy (one answer, high scores), medium (a right majority, mixed scores) and
hopeless (scattered wrong answers, low scores), so the right fit is known in advance."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ponder.proto.errors import InvalidArgument
from ponder.workers.search.plan import PlanTable
from ponder.training import plan as fitplan


def _pool(path: Path, n_questions: int = 30, samples: int = 32, seed: int = 0, kinds: tuple[str, ...] = ("easy", "medium", "hard")) -> Path:
    rng = random.Random(seed)
    answers = []
    for i in range(n_questions):
        kind = kinds[i % len(kinds)]
        cands = []
        for _ in range(samples):
            if kind == "tricky":  # one wrong answer most of the time; the rare right one scores highest
                ok = rng.random() < 0.25
                a, s = ("2", rng.uniform(0.9, 0.95)) if ok else ("5", rng.uniform(0.5, 0.6))
            elif kind == "easy":
                a, ok, s = "1", True, rng.uniform(0.8, 0.95)
            elif kind == "medium":
                ok = rng.random() < 0.6
                a, s = ("2", rng.uniform(0.5, 0.8)) if ok else (str(rng.randrange(3, 6)), rng.uniform(0.3, 0.6))
            else:
                a, ok, s = str(rng.randrange(10, 40)), False, rng.uniform(0.02, 0.15)
            cands.append({"answer": a, "score": s, "correct": ok, "attempt": 0, "node": 0})
        answers.append({"index": i, "question": f"Compute q{i}.", "gold": "x", "answer": "", "correct": False,
                        "candidates": cands})
    path.write_text(json.dumps({"results": [{"strategy": "best_of_n", "budget": samples, "answers": answers}]}))
    return path


def test_fit_finds_bins_plans_and_a_controller_that_saves(tmp_path: Path) -> None:
    qs = fitplan.load_pool(_pool(tmp_path / "pool.json"))
    table = fitplan.fit(qs, [4, 16, 32], pilot=4, draws=8, seed=1)
    assert len(table.edges) == 4 and list(table.edges) == sorted(table.edges)
    assert set(table.plans) == {1, 2, 3, 4, 5}
    assert all(set(row) == {4, 16, 32} for row in table.plans.values())
    fitted = table.fit["controller_fit"]
    # easy questions settle after a wave or two, hopeless ones are abandoned: far below 32
    assert fitted["generations"] < 0.6 * 32
    assert fitted["stop_agreement"] >= fitplan.TARGET_AGREEMENT
    assert fitted["accuracy"] >= fitted["full_accuracy"] - fitplan.MAX_ACCURACY_LOSS
    cv = table.fit["cross_validation"]
    assert set(cv["plan"]) == {"4", "16", "32"}
    held = cv["controller_mean"]
    # held out, too: the hopeless third is abandoned, early stops keep the full answer, and the
    # spend stays far below the budget
    assert held["abandoned"] == pytest.approx(1 / 3, abs=0.05)
    assert held["stop_agreement"] >= fitplan.TARGET_AGREEMENT and held["generations"] < 0.6 * 32
    # easy questions have the highest pilot scores: bin 1
    easy = np.median(fitplan.Trajectories(qs[:1], 4, 4, 0).pilot_mean[0])
    assert table.bin_of(float(easy)) == 1


def test_the_best_scored_sample_wins_a_cell_where_it_beats_the_vote(tmp_path: Path) -> None:
    """"best_of_n best" is a candidate of every cell: on questions where a frequent wrong answer
    outvotes a rare right one that the verifier scores highest, the table picks it."""
    qs = fitplan.load_pool(_pool(tmp_path / "pool.json", n_questions=40, kinds=("easy", "tricky", "hard", "tricky")))
    scores = fitplan.cell_scores(qs, 16, draws=16, seed=0)
    assert set(scores) == {"best_of_n weighted", "best_of_n majority", "best_of_n best"}
    tricky = np.array([i % 2 == 1 for i in range(len(qs))])
    assert scores["best_of_n best"][tricky].mean() > 0.9 and scores["best_of_n weighted"][tricky].mean() < 0.4
    table = fitplan.fit(qs, [4, 16], pilot=4, draws=16, seed=1)
    traj = fitplan.Trajectories(qs, 4, fitplan.PERMUTATIONS, 1)  # the fit's own pilots
    bins = np.array([table.bin_of(float(np.median(traj.pilot_mean[i]))) for i in range(len(qs))])
    most = int(np.bincount(bins[tricky]).argmax())  # the bin holding most tricky questions
    assert (bins[tricky] == most).mean() > 0.6
    for n in (4, 16):
        plan = table.lookup(most, n)
        assert (plan.strategy, plan.selection) == ("best_of_n", "best")
        assert table.fit["cells"][str(most)][str(n)] == "best_of_n best"
    # the easy questions' bin and the hopeless ones' keep the weighted vote
    assert table.lookup(1, 16).selection == table.lookup(5, 16).selection == "weighted"
    assert set(bins[~tricky]) <= {1, 2, 4, 5} and most not in (1, 5)
    # the table records why: every candidate's accuracy per budget and bin, and how many questions
    acc = table.fit["cell_accuracy"]["16"]
    assert acc["all"]["questions"] == len(qs) == sum(acc[str(b)]["questions"] for b in range(1, 6))
    cell = acc[str(most)]
    assert cell["questions"] == int((bins == most).sum())
    assert cell["best_of_n best"] == pytest.approx(scores_in(qs, bins == most, "best"), abs=0.1)
    assert cell["best_of_n best"] > cell["best_of_n weighted"] + 0.5


def scores_in(qs: list[fitplan.Question], mask: np.ndarray, selection: str) -> float:
    """Expected accuracy of best-of-16 with ``selection`` over the questions in ``mask`` (a direct estimate)."""
    rng = random.Random(5)
    return float(np.mean([fitplan.bestof_accuracy(q, 16, selection, 64, rng) for q, m in zip(qs, mask) if m]))


def test_trajectories_match_a_direct_vote(tmp_path: Path) -> None:
    qs = fitplan.load_pool(_pool(tmp_path / "pool.json", n_questions=12, samples=16))
    traj = fitplan.Trajectories(qs, wave=4, perms=3, seed=0)
    assert traj.waves == 4
    # after the last wave every order holds the whole pool: the leader is the full-pool winner
    assert traj.agree[:, :, -1].all()
    assert (traj.n[:, :, -1] == 16).all()
    # a never-stopping controller spends the full budget and agrees everywhere
    never = fitplan.ControllerConfig(stop_share=1.0, window=4096, abandon_after=4096)
    r = traj.run(never, 16)
    assert r["generations"] == 16 and r["agreement"] == 1.0 and r["accuracy"] == r["full_accuracy"]


def test_command_writes_a_table_the_worker_loads(tmp_path: Path) -> None:
    from ponder.workers.models import resolve
    from ponder.workers.prm.confidence import model_fingerprint

    pool = _pool(tmp_path / "pool.json")
    out = tmp_path / "plan.json"
    assert fitplan.main(["--model", "arith", "--verifier", "confidence", "--pool", str(pool), "--budgets", "4,16",
                         "--draws", "4", "--out", str(out)]) == 0
    table = PlanTable.load(out, model_fingerprint(resolve("arith")), "arith")
    assert table.model == "arith" and table.verifier == "confidence"
    assert table.fit["command"].startswith("ponder train plan")
    # auto is recorded as the verifier it stood for, so the command repeats after a default changes
    assert fitplan.main(["--model", "arith", "--pool", str(pool), "--budgets", "4,16", "--draws", "4", "--out", str(out)]) == 0
    table = PlanTable.load(out, model_fingerprint(resolve("arith")), "arith")
    assert table.verifier == "likelihood:arith-large" == resolve("arith").default_verifier
    assert "--verifier likelihood:arith-large " in table.fit["reproduce"]
    with pytest.raises(InvalidArgument) as err:
        PlanTable.load(out, "0" * 16, "other")
    assert err.value.field == "plan"


def test_the_table_is_fitted_with_the_verifiers_vote_power(tmp_path: Path) -> None:
    """The default verifier's calibration carries a vote power (8 for arith's); the table records
    it, and tree runs made with another power are refused (their answers were voted another way)."""
    from ponder.workers.prm.likelihood import LikelihoodCalibration, likelihood_calibration_path
    from ponder.workers.models import resolve

    power = LikelihoodCalibration.load(likelihood_calibration_path(resolve("arith"), "arith-large")).vote_power
    pool = _pool(tmp_path / "pool.json")
    out = tmp_path / "plan.json"
    assert fitplan.main(["--model", "arith", "--pool", str(pool), "--budgets", "4,16", "--draws", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fit"]["vote_power"] == power
    runs = tmp_path / "trees.json"
    runs.write_text(json.dumps({"vote_power": power + 1, "results": []}))
    with pytest.raises(InvalidArgument) as err:
        fitplan.main(["--model", "arith", "--pool", str(pool), "--runs", str(runs), "--budgets", "4,16", "--out", str(out)])
    assert err.value.field == "runs"


def test_bad_inputs_are_invalid_argument(tmp_path: Path) -> None:
    pool = _pool(tmp_path / "pool.json", samples=8)
    with pytest.raises(InvalidArgument) as err:
        fitplan.main(["--pool", str(pool), "--budgets", "4,16", "--out", str(tmp_path / "p.json")])
    assert err.value.field == "budgets"  # 8 samples cannot fit a budget of 16
    with pytest.raises(InvalidArgument) as err:
        fitplan.main(["--pool", str(pool), "--budgets", "4", "--pilot", "5"])
    assert err.value.field == "pilot"
    (tmp_path / "empty.json").write_text(json.dumps({"results": [{"strategy": "beam", "budget": 4, "answers": []}]}))
    with pytest.raises(InvalidArgument) as err:
        fitplan.load_pool(tmp_path / "empty.json")
    assert err.value.field == "pool"


def test_simulation_applies_the_controllers_own_rule(tmp_path: Path) -> None:
    """Replaying the simulation's sample orders through Tally/decide (the code the search loop
    runs) gives the same spend, accuracy and stops as the vectorised simulation."""
    from ponder.workers.answers import Candidate
    from ponder.workers.search.controller import Tally, decide

    qs = fitplan.load_pool(_pool(tmp_path / "pool.json", n_questions=15, samples=32, seed=3))
    traj = fitplan.Trajectories(qs, wave=4, perms=3, seed=5)
    for cfg in (fitplan.ControllerConfig(min_candidates=4, window=2, stop_share=0.7, abandon_after=8, abandon_score=0.2),
                fitplan.ControllerConfig(min_candidates=8, window=8, stop_share=0.6, abandon_after=12, abandon_score=0.3)):
        sim = traj.run(cfg, 32)
        spent, hits, stops = [], [], 0
        for i, q in enumerate(qs):
            gold = {a for a, c in zip(q.answers, q.correct) if c}
            for order in traj.orders[i]:
                t, n = Tally.empty(), 0
                while True:
                    action = decide(t, n, 32, 1, 32, cfg, can_widen=False)
                    if action.kind != "continue":
                        break
                    for j in order[n : n + 4]:
                        t.add(Candidate(q.answers[j], "", float(q.scores[j])), True)
                    n += 4
                stops += action.kind == "stop"
                spent.append(n)
                hits.append(t.leader_answer in gold)
        assert np.mean(spent) == pytest.approx(sim["generations"])
        assert np.mean(hits) == pytest.approx(sim["accuracy"])
        assert stops / len(spent) == pytest.approx(sim["stopped"])
