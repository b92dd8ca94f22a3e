"""The vote power: weighted selection counts each sample as score ** k, with k fitted on held-out
questions by `ponder train vote` and saved in the verifier's calibration. One rule everywhere:
the search loop's selection and live tally, the pool curves of the benchmarks, the plan fitter."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from fakes import ScriptedPolicy, ScriptedVerifier, StepScript
from ponder.evaluation.curves import pool_curve, winner
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.training import vote
from ponder.training.plan import Question, Trajectories, bestof_accuracy
from ponder.workers.answers import Candidate, check_vote_power, select, vote_weight
from ponder.workers.loop import SearchLoop
from ponder.workers.prm.confidence import Calibration, load_confidence
from ponder.workers.search.controller import Tally

ROOT = Path(__file__).resolve().parents[1]

# three doubtful samples say 7, one confident sample says 9
CROWD = [Candidate("7", "a", 0.4), Candidate("7", "b", 0.4), Candidate("7", "c", 0.4), Candidate("9", "d", 0.95)]


def test_a_power_lets_one_confident_sample_outvote_a_doubtful_crowd() -> None:
    assert select(CROWD, "weighted").answer == "7"  # 1.2 against 0.95
    assert select(CROWD, "weighted", 8.0).answer == "9"  # 3 * 0.4**8 = 0.002 against 0.66
    assert select(CROWD, "majority", 8.0).answer == "7"  # the power is for weighted votes only
    assert select(CROWD, "best").answer == "9"
    sel = select(CROWD, "weighted", 2.0)
    assert sel.weights == pytest.approx({"7": 3 * 0.16, "9": 0.9025})
    assert sel.answer == "9"
    # the votes report counts and plain score sums whatever the power
    assert {(v.answer, v.count, round(v.score, 6)) for v in sel.votes} == {("7", 3, 1.2), ("9", 1, 0.95)}


def test_the_pool_curves_count_votes_as_the_search_loop_does() -> None:
    rng = random.Random(0)
    for _ in range(200):
        cands = [Candidate(rng.choice("123"), "", rng.random()) for _ in range(rng.randint(1, 8))]
        for k in (1.0, 2.0, 8.0):
            assert winner([c.answer for c in cands], [c.score for c in cands], "weighted", k) == select(cands, "weighted", k).answer


def test_tally_shares_use_the_power() -> None:
    t = Tally.of(CROWD, scored=True, power=8.0)
    assert t.leader_answer == "9"
    assert t.share == pytest.approx(0.95**8 / (0.95**8 + 3 * 0.4**8))
    assert Tally.of(CROWD, scored=True).leader_answer == "7"
    assert Tally.of(CROWD, scored=True, weighted=False, power=8.0).leader_answer == "7"  # majority


@pytest.mark.parametrize("bad", [0, -1.0, 65.0, float("nan"), float("inf"), True, "8"])
def test_a_bad_vote_power_is_invalid_argument(bad: object) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_vote_power(bad, "powers")  # type: ignore[arg-type]
    assert e.value.field == "powers"


def test_vote_weight() -> None:
    assert vote_weight(None) == 0.0
    assert vote_weight(0.5, 1.0) == 0.5
    assert vote_weight(0.5, 3.0) == pytest.approx(0.125)


def _calibration(tmp_path: Path) -> Path:
    src = ROOT / "artifacts" / "arith" / "policy" / "confidence.json"
    dst = tmp_path / "confidence.json"
    shutil.copy(src, dst)
    return dst


def test_the_calibration_saves_and_loads_its_vote_power(tmp_path: Path) -> None:
    path = _calibration(tmp_path)
    cal = Calibration.load(path)
    assert cal.vote_power == 1.0  # a calibration from before the power was fitted
    assert load_confidence(f"confidence:{path}", None).vote_power == 1.0
    Calibration(**{**cal.__dict__, "vote_power": 4.0}).save(path)
    ver = load_confidence(f"confidence:{path}", None)
    assert (ver.vote_power, ver.calibration_file) == (4.0, path)
    data = json.loads(path.read_text())
    data["vote_power"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidArgument) as e:
        Calibration.load(path)
    assert e.value.field == "verifier" and "vote_power" in str(e.value)


def test_the_search_loop_counts_votes_with_the_verifiers_power() -> None:
    def run(power: float) -> str:
        policy = ScriptedPolicy(StepScript(steps=2, answers=("7", "9"), weights=(3, 1)))
        verifier = ScriptedVerifier(answer_scores={"7": 0.6, "9": 0.95})
        verifier.vote_power = power
        events: list = []
        loop = SearchLoop(policy, verifier, sink=lambda _job, evs: events.extend(evs))
        loop.submit("job", SolveConfig(question="q", strategy="best_of_n", generations=16, seed=3, selection="weighted"))
        loop.run_until_idle()
        (final,) = [e.final for e in events if e.WhichOneof("kind") == "final"]
        counts = {v.answer: v.count for v in final.votes}
        # a crowd of 7s outweighing the 9s on plain score sums, and at least one 9
        assert counts["7"] * 0.6 > counts["9"] * 0.95 and counts["9"] >= 1, counts
        return final.answer

    assert run(1.0) == "7"
    assert run(8.0) == "9"


def _pool(questions: int = 40, seed: int = 0) -> list[dict]:
    """Questions where the right answer has fewer samples but higher scores (a power helps)."""
    rng = random.Random(seed)
    pool = []
    for _ in range(questions):
        right = [{"answer": "1", "score": rng.uniform(0.8, 1.0), "correct": True} for _ in range(rng.randint(3, 6))]
        wrong = [{"answer": str(rng.randint(2, 3)), "score": rng.uniform(0.3, 0.6), "correct": False} for _ in range(10)]
        pool.append({"question": f"q{len(pool)}", "candidates": right + wrong})
    return pool


def test_choose_keeps_the_most_accurate_power_and_ties_go_to_the_smaller() -> None:
    pool = _pool()
    got = vote.choose(pool, 8, (1.0, 2.0, 8.0), draws=8, seed=0)
    assert got["power"] == 8.0
    assert got["accuracy"]["8"] > got["accuracy"]["1"]
    assert got["accuracy"]["8"] > got["majority"]
    assert (got["questions"], got["samples_per_question"]) == (40, 13)
    # every sample of every question agrees: all powers tie, the smallest is kept
    easy = [{"question": "q", "candidates": [{"answer": "1", "score": 0.5, "correct": True}] * 4}] * 10
    assert vote.choose(easy, 2, (4.0, 1.0, 2.0), draws=2, seed=0)["power"] == 1.0


def test_pool_curve_and_the_plan_fitter_take_the_power() -> None:
    pool = _pool(20, seed=1)
    plain = pool_curve(pool, [8], 16, random.Random(0), "weighted").mean()
    powered = pool_curve(pool, [8], 16, random.Random(0), "weighted", 8.0).mean()
    assert powered > plain
    qs = [Question(r["question"], [c["answer"] for c in r["candidates"]], np.array([c["score"] for c in r["candidates"]]),
                   np.array([c["correct"] for c in r["candidates"]]), {}) for r in pool]
    def bestof(power: float) -> float:
        return sum(bestof_accuracy(q, 8, "weighted", 16, random.Random(0), power) for q in qs) / len(qs)

    assert bestof(8.0) > bestof(1.0) + 0.1
    # the controller's trajectories: with the power the right answer leads at the end
    assert Trajectories(qs, 4, 2, 0, 8.0).correct[:, :, -1].mean() > Trajectories(qs, 4, 2, 0).correct[:, :, -1].mean()


def test_train_vote_fits_and_saves_the_power_from_a_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _calibration(tmp_path)
    pool = {"model": "arith", "verifier": "confidence", "dataset": "arith:validation:40",
            "results": [{"strategy": "best_of_n", "budget": 13, "answers": _pool()}]}
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    argv = ["--model", "arith", "--verifier", f"confidence:{path}", "--pool", str(tmp_path / "pool.json"),
            "--budget", "8", "--powers", "1,2,8", "--draws", "8"]
    assert vote.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["power"] == 8.0 and out["calibration"] == str(path)
    cal = Calibration.load(path)
    assert cal.vote_power == 8.0
    assert cal.fit["vote_power"]["accuracy"] == out["accuracy"]
    assert cal.fit["vote_power"]["command"].startswith("ponder train vote --model arith")
    # the command that would draw the same pool: its dataset and samples per question
    assert "--dataset arith:validation:40 --samples 13" in cal.fit["vote_power"]["reproduce"]
    assert cal.fit["heldout"]  # the calibration's own fit is kept
    # a pool drawn with another verifier is refused, naming the field
    pool["verifier"] = "likelihood:arith-large"
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    with pytest.raises(InvalidArgument) as e:
        vote.main(argv)
    assert e.value.field == "pool"
    with pytest.raises(InvalidArgument) as e:
        vote.main([*argv[:-6], "--budget", "1"])
    assert e.value.field == "budget"


def test_train_vote_draws_its_own_pool_when_none_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _calibration(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert vote.main(["--model", "arith", "--verifier", f"confidence:{path}", "--dataset", "arith:validation:12",
                      "--samples", "4", "--budget", "2", "--powers", "1,4", "--draws", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["questions"] == 12 and out["power"] in (1.0, 4.0)
    v = Calibration.load(path).fit["vote_power"]
    assert v["pool_seconds"] > 0 and v["samples_per_question"] == 4 and v["pool"] is None  # drawn, then removed
    assert "--dataset arith:validation:12 --samples 4 --seed 0 --budget 2" in v["reproduce"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the pool went to a scratch folder
