"""The scaling benchmark's smoke run on a few arith questions: every method runs through the
search loop, every finding gets a verdict from the measured data, the page and figures are
written from the JSON, and --from re-renders them without running anything."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_utils import load_bench

VERDICTS = {"reproduced", "not reproduced", "reversed", "not run"}


def test_smoke_run_and_rerender(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("scaling")
    doc = tmp_path / "scaling.md"
    doc.write_text("old results\n" + bench.NOTES_MARKER + "\nnotes kept\n")
    out = tmp_path / "scaling.json"
    # the built-in small model stands in for the larger one of the exchange (M = 1): the path, not the finding;
    # --large 8, not the default 64: auto at N=64 alone took 45 s of a 94 s smoke run
    first = bench.main(["--dataset", "arith:test:4", "--pool", "8", "--budgets", "4", "--large", "8", "--boot", "20",
                        "--large-model", "arith", "--large-samples", "2",
                        "--json", "--out", str(out), "--doc", str(doc)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["benchmark"] == "scaling" and line["questions"] == 4 and line["pool"] == 8
    data, res = first["data"], first["analysis"]
    labels = {r["label"] for r in data["runs"]}
    assert {"beam M=4", "beam M=√N", "lookahead k=1", "lookahead k=3", "dvts M=4", "revision", "auto"} <= labels
    for r in data["runs"]:
        assert len(r["correct"]) == 4 and r["errors"] == 0 and r["error_messages"] == [], r
        # no method spends more than its budget on average (auto: the batch's bank)
        assert sum(r["generations"]) <= 4 * r["budget"]
    assert all(len(p["candidates"]) == 8 for p in data["pool"])
    assert {f["verdict"] for f in res["findings"]} <= VERDICTS and len(res["findings"]) == 8
    # the weighted best-of-N curve at N = pool size is the pool's own vote: no resampling noise
    full = res["curves"]["best_of_n weighted"]["8"]["accuracy"]
    assert 0.0 <= full <= 1.0
    text = doc.read_text()
    assert "old results" not in text and "notes kept" in text and "| Beam search beats best-of-N at small budgets" in text
    pngs = sorted(p.name for p in tmp_path.glob("scaling_*.png"))
    assert pngs == ["scaling_compute_optimal.png", "scaling_exchange.png", "scaling_revisions.png", "scaling_search.png"]
    assert all(len(c) == 2 for c in data["large"]["correct"]) and res["exchange_sizes"]["M"] == pytest.approx(1.0)
    assert [row["N"] for row in res["exchange"]] == [1, 1, 1]  # X = M when M = 1, whatever R
    assert "## Exchanging pretraining for test-time compute" in text
    # the ceiling of moving budget between bins: one row per bin kind and budget, never over budget
    assert {(c["bins"], c["budget"]) for c in res["ceilings"]} == {(k, b) for k in ("oracle", "predicted") for b in (4, 8)}
    assert all(c["generations"] <= c["budget"] + 1e-9 and len(c["n_per_bin"]) == 5 for c in res["ceilings"])
    assert "How much moving budget between difficulty bins could give at best" in text
    # re-render from the JSON alone: same findings, nothing run
    doc.write_text("stale\n" + bench.NOTES_MARKER + "\nnotes kept\n")
    again = bench.main(["--from", str(out), "--boot", "20", "--json", "--doc", str(doc)])
    assert [f["verdict"] for f in again["analysis"]["findings"]] == [f["verdict"] for f in res["findings"]]
    assert "stale" not in doc.read_text()
    # another page beside it (another verifier's run) names its figures after itself
    other = tmp_path / "scaling_other.md"
    bench.main(["--from", str(out), "--boot", "20", "--json", "--doc", str(other)])
    assert sorted(p.name for p in tmp_path.glob("scaling_other_*.png")) == [
        "scaling_other_compute_optimal.png", "scaling_other_exchange.png", "scaling_other_revisions.png", "scaling_other_search.png"]
    assert "](scaling_other_search.png)" in other.read_text() and "](scaling_search.png)" in doc.read_text()
    # --extend goes on from an interrupted run: here the JSON as a run of two methods leaves it
    # when stopped after the pool's first 2 questions
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["intended"] and saved["concurrency"] == 32
    # (as a run made with --large-model none: extending it without the flag adds no larger model)
    assert saved["large_model_spec"] == "arith"
    cut = {**saved, "pool": saved["pool"][:2], "runs": [], "large": None, "complete": False,
           "intended": [["dvts M=4", 4], ["auto", 4]], "large_model_spec": "none"}
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    bench.main(["--from", str(tmp_path / "cut.json"), "--boot", "20", "--json", "--doc", str(doc)])
    assert "**This run is incomplete** (2 of 4 questions pooled, 0 of 2 runs done)" in doc.read_text()
    resumed = bench.main(["--extend", str(tmp_path / "cut.json"), "--boot", "20", "--json",
                          "--out", str(tmp_path / "resumed.json")])["data"]
    assert resumed["complete"] and resumed == json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["large"] is None
    # the run's dtype is recorded and kept by --extend (auto: the run's own, whatever this machine picks now)
    from ponder.workers.models import auto_dtype

    assert saved["dtype"] == resumed["dtype"] == auto_dtype("cpu")
    # the resumed questions are sampled with the seeds an uninterrupted run gives them
    assert [[c["answer"] for c in q["candidates"]] for q in resumed["pool"]] == [[c["answer"] for c in q["candidates"]] for q in saved["pool"]]
    assert [(r["label"], r["budget"], len(r["correct"])) for r in resumed["runs"]] == [("dvts M=4", 4, 4), ("auto", 4, 4)]
    # --extend with --methods adds those methods' runs at the named budgets, and runs nothing else again
    more = bench.main(["--extend", str(tmp_path / "resumed.json"), "--methods", "beam M=4,auto", "--budgets", "4",
                       "--large", "", "--boot", "20", "--json", "--out", str(tmp_path / "more.json")])["data"]
    assert [(r["label"], r["budget"], len(r["correct"])) for r in more["runs"]] == [
        ("dvts M=4", 4, 4), ("auto", 4, 4), ("beam M=4", 4, 4)]
    assert [r["wall_s"] for r in more["runs"][:2]] == [r["wall_s"] for r in resumed["runs"]]
    assert more["intended"][-1] == ["beam M=4", 4] and more["budgets"] == resumed["budgets"] and more["pool"] == resumed["pool"]
    # ... and runs again what lost questions to errors (auto, marked failed by hand), nothing else
    broken = json.loads(out.read_text())
    auto = next(r for r in broken["runs"] if r["label"] == "auto" and r["budget"] == 4)
    auto.update(errors=1, error_messages=["KV cache exhausted (injected)"], wall_s=-1.0)
    kept = {(r["label"], r["budget"]): r["wall_s"] for r in broken["runs"] if r is not auto}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    fixed = bench.main(["--extend", str(tmp_path / "broken.json"), "--large-model", "none", "--boot", "20", "--json",
                        "--out", str(tmp_path / "fixed.json"), "--doc", str(doc)])["data"]
    again_auto = next(r for r in fixed["runs"] if r["label"] == "auto" and r["budget"] == 4)
    assert again_auto["errors"] == 0 and again_auto["wall_s"] > 0 and len(again_auto["correct"]) == 4
    assert again_auto["reruns"] == [{"errors": 1, "error_messages": ["KV cache exhausted (injected)"], "wall_s": -1.0}]
    assert {(r["label"], r["budget"]): r["wall_s"] for r in fixed["runs"] if r is not again_auto} == kept
    assert fixed["large"] == first["data"]["large"]  # present already: not sampled again
    assert fixed["extend_commands"] == ["python benchmarks/scaling.py --extend " + str(tmp_path / "broken.json")
                                        + " --large-model none --boot 20 --json --out " + str(tmp_path / "fixed.json")
                                        + " --doc " + str(doc)]
    assert "**Runs run again by `--extend`**" in doc.read_text() and "KV cache exhausted (injected)" in doc.read_text()
    # --rerun (after the reviser was retrained): those labels' runs again, the earlier ones summarised under
    # 'replaced'; each revision-type run names the reviser (its weights' hash) it ran on
    rev = next(r for r in fixed["runs"] if r["label"] == "revision")
    assert len(rev["reviser"]) == 12
    redone = bench.main(["--extend", str(tmp_path / "fixed.json"), "--rerun", "revision", "--large-model", "none",
                         "--boot", "20", "--json", "--out", str(tmp_path / "redone.json"), "--doc", str(doc)])["data"]
    again_rev = [r for r in redone["runs"] if r["label"] == "revision"]
    assert [(r["budget"], len(r["correct"]), r["reviser"]) for r in again_rev] == [(4, 4, rev["reviser"])]
    assert redone["replaced"] == [{"label": "revision", "budget": 4, "accuracy": sum(rev["correct"]) / 4,
                                   "generations": sum(rev["generations"]) / 4, "wall_s": rev["wall_s"],
                                   "reviser": rev["reviser"], "replaced_by": redone["extend_commands"][-1],
                                   "replaced_at": redone["replaced"][0]["replaced_at"]}]
    others = {(r["label"], r["budget"]): r["wall_s"] for r in fixed["runs"] if r["label"] != "revision"}
    assert {(r["label"], r["budget"]): r["wall_s"] for r in redone["runs"] if r["label"] != "revision"} == others
    page = doc.read_text()
    assert "**Runs replaced by `--extend --rerun`**" in page and f"On {redone['replaced'][0]['replaced_at']}, by `" in page
    acc_now = sum(again_rev[0]["correct"]) / 4
    assert f"- revision N=4: {sum(rev['correct']) / 4:.3f}, then {acc_now:.3f}\n" in page
    # replaced twice: the first replacement names the run that replaced it, not the last one
    twice = bench.main(["--extend", str(tmp_path / "redone.json"), "--rerun", "revision", "--large-model", "none",
                        "--boot", "20", "--json", "--out", str(tmp_path / "twice.json"), "--doc", str(doc)])["data"]
    assert [r["accuracy"] for r in twice["replaced"]] == [sum(rev["correct"]) / 4, acc_now]
    page = doc.read_text()
    last = sum(next(r for r in twice["runs"] if r["label"] == "revision")["correct"]) / 4
    assert f"- revision N=4: {sum(rev['correct']) / 4:.3f}, then {acc_now:.3f}\n" in page
    assert f"- revision N=4: {acc_now:.3f}, then {last:.3f}\n" in page
    # the run counts weighted votes with its verifier's vote power (arith's default: its calibration's),
    # says so on the page, and an --extend under another power is refused before anything runs
    from ponder.workers.models import resolve
    from ponder.workers.prm.likelihood import LikelihoodCalibration, likelihood_calibration_path

    power = LikelihoodCalibration.load(likelihood_calibration_path(resolve("arith"), "arith-large")).vote_power
    assert saved["vote_power"] == power and f"(weighted votes count score ** {power:g})" in page
    (tmp_path / "other_power.json").write_text(json.dumps({**cut, "vote_power": power + 1}))
    with pytest.raises(SystemExit, match="FAILED_PRECONDITION: this run's weighted votes counted score"):
        bench.main(["--extend", str(tmp_path / "other_power.json"), "--boot", "20", "--json"])
    with pytest.raises(SystemExit, match="no run labelled 'nope'"):
        bench.main(["--extend", str(tmp_path / "fixed.json"), "--rerun", "nope", "--json"])
    with pytest.raises(SystemExit, match="--rerun goes with --extend"):
        bench.main(["--rerun", "revision", "--json"])


def _exchange_data(small_pass: list[float], large_pass: list[float], m: float) -> dict:
    """A pool of 8 candidates per question (score = 1 on the right ones, so weighted voting
    finds a right answer whenever one is drawn) and a larger model's 4 samples."""
    pool = []
    for p in small_pass:
        right = round(8 * p)
        cands = [{"answer": "1" if k < right else f"w{k}", "score": 1.0 if k < right else 0.0, "correct": k < right} for k in range(8)]
        pool.append({"candidates": cands, "flops": 8.0, "generations": 8})
    large = {"model": "big", "samples": 4, "params": m * 1e6, "small_params": 1e6, "pretrain_tokens": 10, "small_pretrain_tokens": 10,
             "correct": [[k < round(4 * p) for k in range(4)] for p in large_pass], "flops": [4.0 * m] * len(large_pass),
             "generations": [4] * len(large_pass)}
    return {"pool": pool, "pool_size": 8, "large": large, "ratios": [0.16, 22.0],
            "questions": [{"question": str(i), "gold": "1"} for i in range(len(pool))]}


def test_exchange_verdicts_follow_the_data() -> None:
    """Fig. 9's finding from scripted pools: more samples of the small model win the easy and
    medium questions and lose the hardest ones to the larger model -> reproduced; the larger
    model winning the easy ones -> reversed; no larger model -> not run."""
    import random

    import numpy as np

    bench = load_bench("scaling")
    q = 40
    small = [0.75] * 24 + [0.0] * 16  # easy/medium: often right; hard: never
    oracle = np.array([1] * 8 + [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8)
    won = bench.exchange(_exchange_data(small, [0.5] * 24 + [0.5] * 16, 3.0), oracle, 1.0, 200, random.Random(0))
    assert won["finding"]["verdict"] == "reproduced", won["finding"]
    low = won["rows"][0]
    assert low["R"] == 0.16 and low["X"] == pytest.approx(3 + 3 * 2 / 0.16) and low["N"] == 8 and low["capped"]
    assert won["rows"][1]["N"] == 3  # R = 22: X = 3.27 -> 3 generations
    lost = bench.exchange(_exchange_data([0.0] * q, [1.0] * q, 3.0), oracle, 1.0, 200, random.Random(0))
    assert lost["finding"]["verdict"] == "reversed"
    data = _exchange_data(small, [0.5] * q, 3.0)
    data["large"] = None
    assert bench.exchange(data, oracle, 1.0, 50, random.Random(0))["finding"]["verdict"] == "not run"


def test_the_exchange_charges_the_verifier_and_refuses_a_judge_that_is_the_larger_model() -> None:
    """A verifier that costs as much as the policy per generation halves the small model's
    matched budget; a likelihood verifier whose judge is the larger model is no trade at all."""
    import random

    import numpy as np

    bench = load_bench("scaling")
    oracle = np.array([1] * 8 + [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8)
    data = _exchange_data([0.75] * 24 + [0.0] * 16, [0.5] * 40, 3.0)
    free = bench.exchange(data, oracle, 1.0, 50, random.Random(0))
    assert free["sizes"]["verifier_charge"] == pytest.approx(1.0) and free["rows"][1]["N"] == 3
    # pool FLOPs per generation twice the policy's own (large_flops / M = 1): X at R = 22 is 3.27 / 2
    paid = bench.exchange(data, oracle, 2.0, 50, random.Random(0))
    assert paid["sizes"]["verifier_charge"] == pytest.approx(0.5)
    assert paid["rows"][1]["X"] == pytest.approx((3 + 3 * 2 / 22.0) / 2) and paid["rows"][1]["N"] == 2
    page = "\n".join(bench.render_exchange({"model": "arith"}, {"exchange": paid["rows"], "exchange_sizes": paid["sizes"]}))
    assert "×0.50" in page
    judged = bench.exchange({**data, "verifier_spec": "likelihood:big"}, oracle, 1.0, 50, random.Random(0))
    assert judged["finding"]["verdict"] == "not run" and "judge `big` is the larger model" in judged["finding"]["measured"]
    assert not judged["rows"]
    calibrated = bench.exchange({**data, "verifier_spec": "likelihood:big:uncalibrated"}, oracle, 1.0, 50, random.Random(0))
    assert calibrated["finding"]["verdict"] == "not run"  # the judge, not the judge and its calibration
    unjudged = bench.exchange({**data, "verifier_spec": "likelihood:big", "large": None}, oracle, 1.0, 50, random.Random(0))
    assert "judge `big` is a larger model" in unjudged["finding"]["measured"]
    other = bench.exchange({**data, "verifier_spec": "likelihood:someone-else"}, oracle, 1.0, 50, random.Random(0))
    assert other["rows"]


def test_a_ratio_past_the_pool_is_written_as_its_lower_bound() -> None:
    """Above the whole pool's accuracy, best-of-N's budget is unknown: the page writes its lower
    bound and the JSON line (which has no infinities) gives null and the bound."""
    bench = load_bench("scaling")
    assert bench._needs(2.5, 16.0, 128) == ("40.0", "2.50×")
    assert bench._needs(math.inf, 16.0, 128) == ("> 128 (the pool)", "> 8.0×")
    beyond = bench._ratio_summary({"delta": math.inf, "ci": [0.5, math.inf], "generations": 16.0}, 128)
    assert beyond == {"auto_budget_ratio": None, "auto_budget_ratio_at_least": 8.0, "auto_budget_ratio_ci": [0.5, None]}
    json.loads(json.dumps(beyond), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    within = bench._ratio_summary({"delta": 2.0, "ci": [1.0, 3.0], "generations": 16.0}, 128)
    assert within == {"auto_budget_ratio": 2.0, "auto_budget_ratio_at_least": None, "auto_budget_ratio_ci": [1.0, 3.0]}
    assert bench._ratio_summary({}, 128)["auto_budget_ratio"] is None  # auto not run
